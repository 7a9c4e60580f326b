// Asks a GGUF one question through node-llama-cpp's LlamaChatSession with its defaults (its own chat
// wrapper and default system prompt); prints {"answer", "wrapper"} as JSON. Used by test_node_llama_cpp.py.
import {getLlama, LlamaChatSession} from "node-llama-cpp";

const [modelPath, question, threads] = process.argv.slice(2);
const llama = await getLlama({gpu: false, build: "never"});
const model = await llama.loadModel({modelPath});
// Threads set: the default counts logical CPUs, and spinning threads beyond the cores starve each other.
const context = await model.createContext({contextSize: 2048, threads: Number(threads)});
const session = new LlamaChatSession({contextSequence: context.getSequence()});
const answer = await session.prompt(question, {maxTokens: 64, temperature: 0});
console.log(JSON.stringify({answer, wrapper: session.chatWrapper.wrapperName}));
await llama.dispose();
