"""The playground: ``seqlm serve RUN ...``, a local web page to look inside trained models.

One page (``static/index.html``, this package's own HTML, CSS and JavaScript; nothing is
fetched from another machine) and a JSON API (:mod:`seqlm.serve.app`). The page's tabs:

* Generate: tokens stream in coloured by the probability the model gave them; hover one for
  the model's top-10 next tokens and the entropy; the prefix is shown as the warm-up with the
  model's own predictions on it; two runs side by side on the same prefix.
* Score: per-token surprisal of any text, perplexity and bits/token, unknown tokens, and
  where the model beats or loses to the run's bigram baseline.
* Inside the state: the hidden state (and an LSTM's cell state) as a units × time heatmap
  with the tokens along time; rows sorted by a ranking, a threshold, per-unit scales; click
  a unit to colour the text by its activation; units ranked by variance and by correlation
  with simple features that read English and Chinese.
* Through time: ‖∂l_T/∂h_{T−k}‖ against the lag k (:func:`seqlm.diagnostics.language_model_flow`).
* Training: the run's curves and samples, re-read while ``seqlm train`` writes them.
* Sampling strategies: the chapter's corpus 0..N cut by random sampling and by sequential
  partitioning (:mod:`seqlm.batches`).

Above the tabs, each run's model card; the page speaks English and Chinese and keeps its
view in the URL. This package needs the optional extra ``seqlm[serve]`` (FastAPI and
uvicorn); serving exports needs no torch.
"""

from seqlm.serve.limits import Limits

__all__ = ["Limits", "create_app", "load_runs"]


def __getattr__(name: str):  # the web stack is imported only when asked for
    if name == "create_app":
        from seqlm.serve.app import create_app

        return create_app
    if name == "load_runs":
        from seqlm.serve.runs import load_runs

        return load_runs
    raise AttributeError(name)
