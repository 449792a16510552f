/** What every image source delivers to the boot sequence, whatever its transport. */
export interface SourcedImage {
  /** `file:PATH`, `sd:MANIFEST#ENTRY`, `can:IFACE/master:NODE`, `uart:PORT`. */
  source: string;
  bytes: Uint8Array;
  /** Lower runs first. */
  bootPriority: number;
  /** Declared by a manifest; checked against the image by the boot sequence. */
  expected?: { appName?: string; version?: string; sha256?: string };
  /** Persisted-value keys the manifest says this image owns. */
  framKeys?: number[];
  persist?: boolean;
}

/** A source that could not deliver one entry: reported, and the rest still boot. */
export interface SourceProblem {
  source: string;
  field?: string;
  message: string;
}
