// The page's words in English and Chinese (the chapter's Chinese terms: 词元, 困惑度, 预热,
// 随机采样, 顺序分区, 小批量, 隐状态). t(key, vars) gives the current language's text; the
// language comes from the URL (?lang=), else the browser's preferred languages.

const WORDS = {
  en: {
    "title": "seqlm playground", "run": "run", "language": "language", "api": "API",
    "tab.generate": "Generate", "tab.score": "Score a text", "tab.state": "Inside the state",
    "tab.time": "Through time", "tab.training": "Training",
    "tab.sampling": "Sampling strategies",
    "seed": "seed", "none": "(none)", "inspect": "Look inside this text",
    "dashed": "dashed", "unknown-means": ": outside the vocabulary (read as <unk>)",
    "placeholder": "type or paste a text",
    "gen.prefix": "Prefix (read first: the warm-up, 预热)", "gen.temperature": "temperature",
    "gen.all": "all", "gen.max": "max tokens", "gen.greedy": "greedy",
    "gen.beside": "side by side with", "gen.go": "Generate", "gen.stop": "Stop",
    "gen.legend": "probability the model gave each token", "gen.dotted": "dotted",
    "gen.dotted-means": ": prefix (warm-up)",
    "gen.hover": "— hover or tap a token for the top 10",
    "gen.stats": "{n} tokens in {s} s", "gen.first": ", first after {ms} ms, {rate} tokens/s",
    "tip.first": "nothing predicts the first token", "tip.entropy": "entropy {h} bits",
    "tip.surprisal": "surprisal {b} bits", "tip.unknown": "outside the vocabulary: read as <unk>",
    "tip.bigram": "bigram {b} bits (model {better} by {d})", "better": "better",
    "worse": "worse",
    "score.text": "Text to score", "score.colour": "colour by",
    "score.by-surprisal": "surprisal (bits)", "score.by-bigram": "model vs bigram baseline",
    "score.go": "Score", "perplexity": "perplexity", "bits": "bits / token",
    "tokens": "tokens", "unknown": "unknown tokens",
    "score.baseline": "{name}: perplexity · bits/token (the same tokens)",
    "score.beats": "model beats the bigram", "score.loses": "bigram beats the model",
    "score.surprisal0": "surprisal 0 bits",
    "score.reading": "read with", "score.static": "the trained weights",
    "score.cache": "+ neural cache", "score.dynamic": "+ dynamic evaluation",
    "score.both": "+ both", "score.by-change": "change from the trained weights",
    "score.static-ppl": "the trained weights alone: perplexity",
    "score.helped": "reading helped", "score.hurt": "reading hurt",
    "tip.change": "trained weights {b} bits ({better} by {d})",
    "state.text": "Text to read (the scored or generated text lands here)",
    "state.go": "Read the states", "state.layer": "layer", "state.sort": "sort units by",
    "state.unit-order": "unit number", "state.variance": "variance",
    "state.scale": "colour scale", "state.global": "one for all units",
    "state.per-unit": "per unit", "state.rows": "row height", "state.auto": "fit",
    "state.threshold": "fires above |value| ≥", "state.activation": "activation",
    "state.note": "units (rows) × time (columns); click a row to pick a unit",
    "state.shape": "layer {l}: {h} units (rows, sorted by {sort}) × {n} tokens (columns); "
      + "hover a cell for its value, click a row to pick a unit",
    "state.h": "hidden state h", "state.c": "cell state c (LSTM)",
    "state.coloured": "text coloured by layer {l}, unit {u}; outlined where |value| ≥ {t}",
    "state.pick": "pick a unit", "state.cell": "layer {l} · unit {u} · token {i} {tok}: {v}",
    "state.by-variance": "by variance over the text",
    "state.by-feature": "by correlation with “{f}”", "state.no-units": "no unit",
    "feature.inside quotes": "inside quotes", "feature.inside brackets": "inside brackets",
    "feature.position in sentence": "position in sentence",
    "feature.position in line": "position in line", "feature.after a space": "after a space",
    "feature.punctuation": "punctuation",
    "time.text": "Text (its last tokens are read; l_T is the loss on the last one)",
    "time.go": "Measure ‖∂l_T/∂h_(T−k)‖",
    "time.title": "gradient of the loss on the last token, {n} steps back",
    "time.x": "lag k (steps back)", "time.y": "norm (log scale)",
    "time.spectral": "‖J_T ⋯ J_(T−k+1)‖ (spectral)",
    "time.state": "state size D = {d}; last/first {g}", "time.unknown": "{n} unknown tokens",
    "train.x": "x axis", "train.tokens": "tokens", "train.seconds": "seconds",
    "train.samples": "Samples saved during training", "train.seen": "tokens seen",
    "train.ppl": "perplexity", "train.ppl-y": "perplexity (log)",
    "train.train-ppl": "train perplexity", "train.val-ppl": "validation perplexity",
    "train.lr": "learning rate", "train.grad": "gradient norm before clipping",
    "train.grad-mean": "gradient norm (mean)", "train.grad-max": "gradient norm (max)",
    "train.unigram": "unigram (val)", "train.bigram": "bigram (val)",
    "train.recovery": "recovery at step {s}", "train.no-samples": "no samples.txt (yet)",
    "train.status": "{n} records, last step {s}; refreshed {time} (every {every} s while this tab is open)",
    "no-data": "no data yet",
    "samp.n": "corpus 0..N−1, N", "samp.batch": "batch size", "samp.steps": "num_steps",
    "samp.go": "Draw",
    "samp.note": "Each minibatch is X (the row shown) and Y = X shifted one token right. "
      + "Random sampling resets the state before every minibatch; sequential partitioning "
      + "carries row b's state into row b of the next minibatch.",
    "samp.random": "Random sampling", "samp.sequential": "Sequential partitioning",
    "samp.summary": "(contiguous = {c}, {n} minibatches)", "samp.minibatch": "minibatch {k}",
    "samp.reset": "state reset", "samp.carry": "← state of minibatch {k}, row {b}",
    "card.corpus": "corpus", "card.tokens": "{train} train / {val} validation tokens",
    "card.tokenizer": "{kind} tokens, vocabulary {v}", "card.model": "model",
    "card.trained": "trained", "card.trained-v": "{steps} steps, {tokens} tokens, {s} s",
    "card.budget": "budget", "card.val": "best validation perplexity",
    "card.vs": "{ppl} (step {step}) · unigram {uni} · bigram {bi}",
    "card.recipe": "recipe", "card.use": "use it", "card.unknown": "not recorded",
    "card.params": "{p} parameters", "card.steps": "{n} steps", "card.seconds": "{n} s",
    "card.epochs": "{n} epochs", "card.none": "none",
    "err.server": "the server did not answer ({m}); is seqlm serve still running?",
  },
  zh: {
    "title": "seqlm 实验台", "run": "模型", "language": "语言", "api": "API",
    "tab.generate": "生成", "tab.score": "文本打分", "tab.state": "隐状态内部",
    "tab.time": "随时间的梯度", "tab.training": "训练过程", "tab.sampling": "采样策略",
    "seed": "随机种子", "none": "（无）", "inspect": "查看这段文本的隐状态",
    "dashed": "虚线框", "unknown-means": "：词表外的词元（按 <unk> 读入）",
    "placeholder": "输入或粘贴一段文本",
    "gen.prefix": "前缀（先读入：预热）", "gen.temperature": "温度", "gen.all": "全部",
    "gen.max": "最多词元数", "gen.greedy": "贪心", "gen.beside": "并排对比",
    "gen.go": "生成", "gen.stop": "停止", "gen.legend": "模型给每个词元的概率",
    "gen.dotted": "点线", "gen.dotted-means": "：前缀（预热）",
    "gen.hover": "— 悬停或点按词元，查看概率最高的 10 个候选",
    "gen.stats": "{n} 个词元，用时 {s} 秒", "gen.first": "，首个词元 {ms} 毫秒，每秒 {rate} 个",
    "tip.first": "第一个词元之前没有上文", "tip.entropy": "熵 {h} 比特",
    "tip.surprisal": "惊奇度 {b} 比特", "tip.unknown": "词表外：按 <unk> 读入",
    "tip.bigram": "二元语法 {b} 比特（模型{better} {d}）", "better": "更好", "worse": "更差",
    "score.text": "要打分的文本", "score.colour": "着色依据",
    "score.by-surprisal": "惊奇度（比特）", "score.by-bigram": "模型对比二元语法基线",
    "score.go": "打分", "perplexity": "困惑度", "bits": "比特 / 词元", "tokens": "词元数",
    "unknown": "词表外词元",
    "score.baseline": "{name}：困惑度 · 比特/词元（同一批词元）",
    "score.beats": "模型胜过二元语法", "score.loses": "二元语法胜过模型",
    "score.surprisal0": "惊奇度 0 比特",
    "score.reading": "读取方式", "score.static": "训练好的权重",
    "score.cache": "+ 神经缓存", "score.dynamic": "+ 动态评估",
    "score.both": "+ 两者", "score.by-change": "相对训练好的权重的变化",
    "score.static-ppl": "仅用训练好的权重：困惑度",
    "score.helped": "边读边学更好", "score.hurt": "边读边学更差",
    "tip.change": "训练好的权重 {b} 比特（{better} {d}）",
    "state.text": "要读入的文本（打分或生成的文本会放到这里）", "state.go": "读取隐状态",
    "state.layer": "层", "state.sort": "隐藏单元排序", "state.unit-order": "单元编号",
    "state.variance": "方差", "state.scale": "色标", "state.global": "所有单元共用",
    "state.per-unit": "每个单元各自", "state.rows": "行高", "state.auto": "自适应",
    "state.threshold": "激活阈值 |值| ≥", "state.activation": "激活值",
    "state.note": "单元（行）× 时间步（列）；点一行选中一个单元",
    "state.shape": "第 {l} 层：{h} 个单元（行，按{sort}排序）× {n} 个词元（列）；"
      + "悬停查看数值，点一行选中该单元",
    "state.h": "隐状态 h", "state.c": "记忆元 c（LSTM）",
    "state.coloured": "按第 {l} 层第 {u} 个单元着色；|值| ≥ {t} 处加框",
    "state.pick": "选一个单元", "state.cell": "第 {l} 层 · 单元 {u} · 第 {i} 个词元 {tok}：{v}",
    "state.by-variance": "按在文本上的方差",
    "state.by-feature": "按与“{f}”的相关系数", "state.no-units": "没有单元",
    "feature.inside quotes": "在引号内", "feature.inside brackets": "在括号内",
    "feature.position in sentence": "句中位置", "feature.position in line": "行中位置",
    "feature.after a space": "紧跟空格", "feature.punctuation": "标点",
    "time.text": "文本（读入其最后的词元；l_T 是最后一个词元上的损失）",
    "time.go": "测量 ‖∂l_T/∂h_(T−k)‖",
    "time.title": "最后一个词元的损失对 {n} 步之前隐状态的梯度",
    "time.x": "间隔 k（向前的步数）", "time.y": "范数（对数坐标）",
    "time.spectral": "‖J_T ⋯ J_(T−k+1)‖（谱范数）",
    "time.state": "状态大小 D = {d}；末/初 {g}", "time.unknown": "{n} 个词表外词元",
    "train.x": "横轴", "train.tokens": "词元数", "train.seconds": "秒",
    "train.samples": "训练中保存的样本", "train.seen": "已训练的词元数",
    "train.ppl": "困惑度", "train.ppl-y": "困惑度（对数）", "train.train-ppl": "训练困惑度",
    "train.val-ppl": "验证困惑度", "train.lr": "学习率", "train.grad": "裁剪前的梯度范数",
    "train.grad-mean": "梯度范数（平均）", "train.grad-max": "梯度范数（最大）",
    "train.unigram": "一元语法（验证集）", "train.bigram": "二元语法（验证集）",
    "train.recovery": "第 {s} 步回退", "train.no-samples": "（还）没有 samples.txt",
    "train.status": "{n} 条记录，最后一步 {s}；{time} 刷新（本页打开时每 {every} 秒一次）",
    "no-data": "还没有数据",
    "samp.n": "语料 0..N−1，N", "samp.batch": "批量大小", "samp.steps": "时间步数",
    "samp.go": "画出",
    "samp.note": "每个小批量是 X（所示的行）和 Y = X 右移一个词元。随机采样在每个小批量之前"
      + "重置隐状态；顺序分区把第 b 行的隐状态传给下一个小批量的第 b 行。",
    "samp.random": "随机采样", "samp.sequential": "顺序分区",
    "samp.summary": "（相邻 = {c}，{n} 个小批量）", "samp.minibatch": "小批量 {k}",
    "samp.reset": "隐状态重置", "samp.carry": "← 小批量 {k} 第 {b} 行的隐状态",
    "card.corpus": "语料", "card.tokens": "训练 {train} / 验证 {val} 个词元",
    "card.tokenizer": "{kind} 词元，词表 {v}", "card.model": "模型", "card.trained": "已训练",
    "card.trained-v": "{steps} 步，{tokens} 个词元，{s} 秒", "card.budget": "预算",
    "card.val": "最佳验证困惑度", "card.vs": "{ppl}（第 {step} 步）· 一元语法 {uni} · 二元语法 {bi}",
    "card.recipe": "配方", "card.use": "用法", "card.unknown": "未记录",
    "card.params": "{p} 个参数", "card.steps": "{n} 步", "card.seconds": "{n} 秒",
    "card.epochs": "{n} 轮", "card.none": "无",
    "err.server": "服务器没有回应（{m}）；seqlm serve 还在运行吗？",
  },
};

export const LANGUAGES = Object.keys(WORDS);
let current = "en";

export function pickLanguage(params) {
  const asked = params.get("lang");
  if (LANGUAGES.includes(asked)) return asked;
  const preferred = navigator.languages || [navigator.language || "en"];
  for (const tag of preferred) {
    const base = String(tag).toLowerCase().split("-")[0];
    if (LANGUAGES.includes(base)) return base;
  }
  return "en";
}

export function language() { return current; }

export function t(key, vars = {}) {
  const text = WORDS[current][key] ?? WORDS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

// Set the language and relabel every element carrying data-i18n (its text) or
// data-i18n-placeholder.
export function setLanguage(lang) {
  current = LANGUAGES.includes(lang) ? lang : "en";
  document.documentElement.lang = current === "zh" ? "zh-CN" : "en";
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of document.querySelectorAll("textarea")) el.placeholder = t("placeholder");
  document.title = t("title");
}

export function number(x, digits = 0) {
  return Number(x).toLocaleString(current === "zh" ? "zh-CN" : "en",
                                   { maximumFractionDigits: digits });
}
