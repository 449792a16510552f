/**
 * The HXE image model shared by every layer. This file is the contract between the HXE
 * library (parse/verify/build) and its users (engine, links, CLI); the byte layout is in
 * docs/hxe_format.md.
 */

export type HxeErrorCode = 'EBADMSG' | 'ENOSPC';

export type HxeErrorReason =
  | 'too_small' | 'header_truncated' | 'bad_magic' | 'unsupported_version' | 'reserved_nonzero'
  | 'app_name_not_ascii' | 'code_unaligned' | 'entry_unaligned' | 'entry_out_of_range' | 'truncated'
  | 'crc_mismatch' | 'meta_table_out_of_bounds' | 'meta_table_overlap' | 'section_out_of_bounds'
  | 'section_overlap' | 'section_truncated' | 'string_out_of_range' | 'string_unterminated'
  | 'string_not_utf8' | 'duplicate_value' | 'duplicate_command' | 'duplicate_mailbox'
  | 'mailbox_json_invalid' | 'mailbox_json_version' | 'mailbox_entry_invalid' | 'mailbox_mode_unknown'
  | 'meta_inconsistent'
  | 'code_too_large' | 'ro_too_large' | 'bss_too_large'
  // signature trailer (docs/hxe_format.md, "Signature trailer")
  | 'trailer_invalid';

/** A typed, serialisable verdict on a malformed image. `offset` is the byte offset in the file. */
export interface HxeError {
  code: HxeErrorCode;
  reason: HxeErrorReason;
  message: string;
  offset?: number;
}

export interface HxeWarning {
  reason: string;
  message: string;
  offset?: number;
}

export interface HxeHeader {
  version: 1 | 2;
  flags: number;
  entry: number;
  codeLen: number;
  roLen: number;
  bssSize: number;
  reqCaps: number;
  crc32: number;
  appName: string;
  metaOffset: number;
  metaCount: number;
  manifestPresent: boolean;
  allowMultipleInstances: boolean;
  headerSize: 32 | 96;
}

/** An IEEE half-precision field: the raw bits are kept so a rebuild is byte-identical. */
export interface F16 {
  raw: number;
  value: number;
}

export interface ValueEntry {
  group: number;
  id: number;
  flags: number;
  auth: number;
  init: F16;
  name: string | null;
  unit: string | null;
  epsilon: F16;
  min: F16;
  max: F16;
  persistKey: number;
  groupName: string | null;
}

export interface CommandEntry {
  group: number;
  id: number;
  flags: number;
  auth: number;
  handlerOffset: number;
  name: string | null;
  help: string | null;
  groupName: string | null;
  /** High 16 bits of the entry's last word (the low 16 are groupName's offset); kept for exact rebuilds. */
  reserved?: number;
}

export interface MailboxEntry {
  /** Full target name, e.g. `app:telemetry` or `pid:1/rx`. */
  target: string;
  capacity: number;
  mode: number;
  /** Bindings or other fields of the JSON form that the engine does not interpret, kept verbatim. */
  extra?: Record<string, unknown>;
  /**
   * The JSON object exactly as the image carries it (keys such as `mode: "rw|tap"` included), so a rebuild
   * reproduces the toolchain's bytes. The builder writes it verbatim while it still describes the same
   * target, capacity and mode; otherwise it writes the canonical form.
   */
  source?: Record<string, unknown>;
}

export interface SectionInfo {
  type: number;
  offset: number;
  size: number;
  entryCount: number;
}

export interface HxeImage {
  header: HxeHeader;
  code: Uint8Array;
  rodata: Uint8Array;
  sections: SectionInfo[];
  values: ValueEntry[];
  commands: CommandEntry[];
  mailboxes: MailboxEntry[];
  warnings: HxeWarning[];
  /** Total image size in bytes (the whole file). */
  size: number;
  /**
   * End of the image body: the furthest end of code, rodata, metadata table and sections. Bytes in
   * [bodyEnd, size) are trailing bytes (reported as a `trailing_bytes` warning unless a trailer claims them).
   */
  bodyEnd: number;
  /** How the `.mailbox` section was encoded, when the image has one (`legacy` = 16-byte structs). */
  mailboxFormat?: 'json' | 'legacy';
  /** The signature trailer at the end of the body, when a well-formed one is present (docs/hxe_format.md). */
  trailer?: SignatureTrailer;
}

/** `major.minor.patch+build`, the image version recorded in a signature trailer. */
export interface ImageVersion {
  major: number;
  minor: number;
  patch: number;
  build: number;
}

/** A decoded signature trailer. Parsing checks its structure only; src/hxe/signature.ts checks the crypto. */
export interface SignatureTrailer {
  /** File offset of the trailer's first byte: the end of the image body. */
  offset: number;
  /** Trailer length in bytes; it always runs to the end of the file. */
  length: number;
  /** File offset where the signed part of the trailer (head + protected TLVs) ends. */
  protectedEnd: number;
  version: ImageVersion;
  securityCounter: number;
  /** First 8 bytes of SHA-256 over the raw 32-byte Ed25519 public key, lowercase hex. */
  keyId: string;
  /** SHA-256 of the signed message, lowercase hex. */
  sha256: string;
  signature: Uint8Array;
}

/** Limits applied before any allocation; the HSX VM's defaults are 0x10000 each. */
export interface HxeLimits {
  maxCode: number;
  maxRodata: number;
  maxBss: number;
}

/** What the VM loader receives: the image with its metadata stripped. */
export interface StrippedImage {
  entry: number;
  code: Uint8Array;
  rodata: Uint8Array;
  bssSize: number;
}
