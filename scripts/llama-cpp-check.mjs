// Runs a GGUF file in the real llama.cpp (through node-llama-cpp's prebuilt
// binaries) and prints the mean NLL / perplexity over the same windows as
// `moefy eval` (each document BOS-first, windows of --ctx tokens overlapping by
// one, at most --max-tokens predicted tokens), plus the top logits of the first
// window, so the two can be compared. Not run by CI (needs npm + network once):
//
//   mkdir -p /tmp/llcpp && (cd /tmp/llcpp && npm install --ignore-scripts node-llama-cpp@3.22.1)
//   NODE_PATH=/tmp/llcpp/node_modules node scripts/llama-cpp-check.mjs model.gguf data/eval.jsonl [ctx] [max_tokens]
//   build/moefy eval --model model.gguf --data data/eval.jsonl --ctx CTX --max-tokens N
import fs from "node:fs";
import path from "node:path";
import {createRequire} from "node:module";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x.js"));
const {getLlama, LlamaLogLevel} = await import(require.resolve("node-llama-cpp"));

const [modelPath, dataPath, ctxArg, maxArg] = process.argv.slice(2);
if (!modelPath || !dataPath) {
    console.error("usage: node scripts/llama-cpp-check.mjs MODEL.gguf DATA.jsonl [ctx=512] [max_tokens=2000]");
    process.exit(2);
}
const ctx = Number(ctxArg || 512), maxTokens = Number(maxArg || 2000);

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath});
const context = await model.createContext({contextSize: ctx, batchSize: ctx, sequences: 1});
const seq = context.getSequence();

// Documents as moefy reads them: a JSON object per line, its "text" (else "content").
const docs = fs.readFileSync(dataPath, "utf8").split("\n").filter((l) => l.trim()).map((l) => {
    const j = JSON.parse(l);
    return j.text ?? j.content;
});
const windows = [];
let budget = maxTokens;
for (const doc of docs) {
    if (budget <= 0) break;
    const ids = [model.tokens.bos, ...model.tokenize(doc, false)];
    for (let start = 0; start + 1 < ids.length && budget > 0; start += ctx - 1) {
        let w = ids.slice(start, start + ctx);
        if (w.length - 1 > budget) w = w.slice(0, budget + 1);
        if (w.length < 2) break;
        windows.push(w);
        budget -= w.length - 1;
    }
}

let nll = 0, n = 0;
let top = null;
for (const w of windows) {
    await seq.clearHistory();
    const input = w.map((t, i) => (i + 1 < w.length
        ? [t, {generateNext: {logits: true}}]
        : t));
    const out = await seq.controlledEvaluate(input);
    for (let i = 0; i + 1 < w.length; ++i) {
        const next = out[i].next;
        const logits = next.logits;  // every token's raw logit, sorted high to low
        const maxLogit = logits.values().next().value;
        let sum = 0;
        for (const l of logits.values()) sum += Math.exp(l - maxLogit);
        const lp = logits.get(w[i + 1]) - maxLogit - Math.log(sum);
        nll -= lp;
        n += 1;
        if (top === null && i === 0) top = [...logits.entries()].slice(0, 5);
    }
}
const mean = nll / n;
const pkgDir = path.resolve(path.dirname(require.resolve("node-llama-cpp")), "..");
const version = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8")).version;
const bundled = JSON.parse(fs.readFileSync(path.join(pkgDir, "llama", "llama.cpp.info.json"), "utf8")).tag;
console.log(`llama.cpp ${bundled} (node-llama-cpp ${version})`);
console.log(`model        ${modelPath}`);
console.log(`first tokens ${windows[0].slice(0, 12).join(" ")}`);
console.log(`top logits after BOS: ${top.map(([t, l]) => `${t}:${l.toFixed(4)}`).join(" ")}`);
console.log(`tokens       ${n}`);
console.log(`mean NLL     ${mean.toFixed(4)}`);
console.log(`perplexity   ${Math.exp(mean).toFixed(3)}`);
await context.dispose();
await model.dispose();
