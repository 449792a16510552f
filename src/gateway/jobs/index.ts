/** Jobs: the daemon as a master (docs/jobs.md). */
export * from './types.js';
export {
  JobJournal,
  JournalWriteError,
  JOURNAL_FILE,
  JOURNAL_VERSION,
  decodeLine,
  encodeLine,
  replayBytes,
  type DamageReason,
  type DamagedLine,
  type JobsFs,
  type JournalOptions,
  type JournalRecord,
  type JournalReport,
  type Replay,
} from './journal.js';
export { DEFAULT_MAX_IMAGE_BYTES, IMAGES_DIR, ImageCache, sha256Hex, type ImageCacheOptions } from './image-cache.js';
export {
  DEFAULT_MAX_AGE_S,
  DEFAULT_MAX_FINISHED,
  DEFAULT_PROGRESS_HZ,
  JobManager,
  checkOptions,
  stateOfVerdict,
  unwritable,
  type JobLogLevel,
  type JobManagerOptions,
  type RecoveryReport,
} from './manager.js';
