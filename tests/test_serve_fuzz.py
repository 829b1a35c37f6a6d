"""A bounded property-based fuzz of seqlm serve's API from its own ``/openapi.json``.

Schemathesis draws requests from the schema the server publishes, valid ones and invalid
ones (wrong types, out-of-range numbers, missing and extra fields), sends them to a real
server on loopback and checks each answer: never a 500, a status code the schema documents,
the documented content type, a body that matches the documented schema, and every invalid
request refused with a 4xx. After each operation's group the server must still answer a
normal request. Drawn from a fixed seed (``derandomize``), so a failure repeats.

Not checked: that every schema-valid request succeeds (schemathesis's
``positive_data_acceptance``), because some rules cannot be written in a JSON schema: a
text of no tokens for this tokenizer, too many tokens for the state view, a run name that is
a string but not one the server has. Those are answered 422 or 404, naming the field.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, negative_data_rejection,  # noqa: E402
                                 not_a_server_error, response_headers_conformance,
                                 response_schema_conformance, status_code_conformance)

from seqlm.serve import Limits, create_app, load_runs  # noqa: E402
from test_serve import make_run  # noqa: E402
from test_serve_api import serving  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]
EXAMPLES = 15  # drawn per operation, besides the coverage phase's boundary values
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection]
ASKED: dict[str, int] = {}  # requests sent per operation


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    runs = load_runs([make_run(tmp_path_factory.mktemp("fuzz"))])
    limits = Limits(max_text=300, max_new_tokens=50, max_state_tokens=300,
                    max_gradient_steps=20)
    with serving(create_app(runs, limits=limits)) as base:
        yield base


@pytest.fixture(scope="module")
def api_schema(url):
    loaded = schemathesis.openapi.from_url(f"{url}/openapi.json")
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
                                    deterministic=True, allow_x00=True)
    return loaded


@pytest.fixture
def answers_after(url, request):
    """After each operation's group of requests, a normal one must still work."""
    yield
    answer = httpx.post(f"{url}/api/generate", timeout=30,
                        json={"prefix": "the ", "max_new_tokens": 5, "seed": 0})
    kinds = [json.loads(line)["type"] for line in answer.text.splitlines()]
    assert answer.status_code == 200 and kinds == ["prefix"] + ["token"] * 5 + ["end"]


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_the_api_keeps_its_schema_under_fuzzing(case, answers_after):
    label = f"{case.method} {case.path}"
    ASKED[label] = ASKED.get(label, 0) + 1
    case.call_and_validate(checks=CHECKS, timeout=30)


def test_every_operation_was_fuzzed():  # runs after the fuzz (same module, file order)
    if not ASKED:
        pytest.skip("the fuzz did not run here (deselected)")
    fuzzed = {label for label, n in ASKED.items() if n >= 5}  # not just a wrong-method probe
    assert {"POST /api/generate", "POST /api/score", "POST /api/states", "POST /api/gradients",
            "GET /api/sampling", "GET /api/runs/{name}/card"} <= fuzzed, ASKED
