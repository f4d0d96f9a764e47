/** The engine: traced tensor graphs, autodiff, ONNX emission and ONNX Runtime execution. */
export * from './dims.js';
export * from './graph.js';
export * from './host.js';
export * from './ops.js';
export { checkpoint, grad, segment } from './autodiff.js';
export { emitOnnx, OPSET } from './onnx.js';
export type { EmittedModel, EmitOptions } from './onnx.js';
export { compile, Program, setDefaultThreads, setSessionSettings, sessionStats } from './runtime.js';
export type { SessionSettings } from './runtime.js';
export type { DropoutSeed, RuntimeOptions } from './runtime.js';
export * from './safetensors.js';
