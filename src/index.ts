/**
 * uniter-ts: the library entry point. Start with `Uniter.fromPretrained(dir)` (docs/api.md);
 * the lower layers (runner, task graphs, collates, data stores, ONNX export) are exported for
 * those who need them.
 */

// Inference on model folders
export { Uniter } from './api/uniter.js';
export type { BatchOrInputs, FromPretrainedOptions } from './api/uniter.js';
export { loadPretrained, CONFIG_FILE, WEIGHTS_FILE } from './api/pretrained.js';
export type { LoadPretrainedOptions, PretrainedModel } from './api/pretrained.js';
export { SCORING_TASKS, SCORE_OUTPUT, TASK_REQUESTS, headsInWeights, resolveTask } from './api/scoring-heads.js';
export type { ScoringTask, TaskRequest } from './api/scoring-heads.js';
export { collateInputs, textIds } from './api/inputs.js';
export type { ModelInput, RegionFeatures, TextImageInput, TextImagePairInput, TextInput } from './api/inputs.js';

// Region features from raw images: the BUTD Faster R-CNN
export { Detector, regionsOf } from './detector/detector.js';
export type { DetectorOptions, DetectorRunStats } from './detector/detector.js';
export { decodeImage, toRgbImage, ImageDecodeError } from './vision/decode.js';
export type { ImageInput } from './vision/decode.js';
export type { BoxCountRule, Detection, Regions, RgbImage } from './detector/types.js';
export { UNITER_BOX_RULE } from './detector/types.js';
export { VG_CONFIG, parseDetectorConfig, readDetectorConfig } from './detector/config.js';
export type { DetectorConfig } from './detector/config.js';
// Pipelines (raw inputs -> plain answers) and alignment as data
export { pipeline, PIPELINE_TASKS, InputError, readId2Label, boxFeaturesToRegions } from './api/pipeline.js';
export type { Pipeline, PipelineTask, PipelineOptions, PipelineInputs, PipelineOutputs, ImageLike, BoxFeatures, ResolvedImage, AlignmentResult, ScoredLabel } from './api/pipeline.js';
export { Aligner, groupWords } from './api/alignment.js';
export type { Alignment, AlignedWord, AlignmentOptions } from './api/alignment.js';

// ONNX export
export { exportOnnx, exportModel, verifyExport, sidecarPath, BATCH_INPUTS } from './export/export.js';
export type { ExportOnnxOptions, ExportOptions, ExportResult, IoSpec, VerifyReport } from './export/export.js';
export { writeOnnxModel, MIN_OPSET, MAX_OPSET } from './export/onnx-file.js';

// Model, weights and the runner underneath
export { PRESETS, parseConfig, loadConfig, saveConfig } from './model/config.js';
export type { UniterConfig } from './model/config.js';
export { UniterRunner } from './model/runner.js';
export { buildTaskGraph, prepareFeeds } from './model/task-graphs.js';
export type { TaskName } from './model/task-graphs.js';
export { allSpecs, initParams } from './model/params.js';
export { readWeightsAny, loadNonStrict } from './model/load.js';
export type { LoadReport } from './model/load.js';
export { saveModelFolder, loadModelFolder } from './pretrain/checkpoint.js';

// Tensors and files
export { f32, i64, bool, toNumbers } from './engine/host.js';
export type { HostTensor, DType } from './engine/host.js';
export { readSafetensors, writeSafetensors } from './engine/safetensors.js';

// Text, images and batches
export { BertTokenizer, defaultTokenizer } from './data/tokenizer.js';
export { positionFeatures } from './data/types.js';
export type { Batch, ImageRecord, ImageSource, TextRecord, TextSource } from './data/types.js';
export {
  collateRows,
  itmCollate,
  itmRankCollate,
  vqaCollate,
  veCollate,
  nlvr2PairedCollate,
  nlvr2TripletCollate,
  reCollate,
  vcrCollate,
  vcrEvalCollate,
} from './data/collate.js';
export type { SeqRow } from './data/collate.js';
export { TxtDb } from './data/txtdb.js';
export { ImgDb } from './data/imgdb.js';
export { generateWorld } from './data/world.js';
export type { World, WorldOptions } from './data/world.js';
