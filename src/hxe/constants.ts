import type { HxeLimits } from './types.js';

/** Byte-level constants of the HXE format (docs/hxe_format.md). All multi-byte fields are big-endian. */
export const HXE_MAGIC = 0x48535845; // 'HSXE'
export const HEADER_V1_SIZE = 32;
export const HEADER_V2_SIZE = 96;
/** Smallest input that can hold any header. */
export const MIN_HEADER_SIZE = HEADER_V1_SIZE;

/** Header field offsets. */
export const OFF_MAGIC = 0x00;
export const OFF_VERSION = 0x04;
export const OFF_FLAGS = 0x06;
export const OFF_ENTRY = 0x08;
export const OFF_CODE_LEN = 0x0c;
export const OFF_RO_LEN = 0x10;
export const OFF_BSS_SIZE = 0x14;
export const OFF_REQ_CAPS = 0x18;
export const OFF_CRC = 0x1c;
export const OFF_APP_NAME = 0x20;
export const APP_NAME_SIZE = 32;
export const OFF_META_OFFSET = 0x40;
export const OFF_META_COUNT = 0x44;
export const OFF_RESERVED = 0x48;
export const RESERVED_SIZE = 24;

/** The CRC covers bytes [0, CRC_PREFIX_END) and everything from the end of the header on. */
export const CRC_PREFIX_END = OFF_CRC;

export const FLAG_MANIFEST_PRESENT = 0x0001;
export const FLAG_ALLOW_MULTIPLE = 0x0002;
export const KNOWN_FLAGS = FLAG_MANIFEST_PRESENT | FLAG_ALLOW_MULTIPLE;

export const META_ENTRY_SIZE = 16;
export const SECTION_VALUE = 1;
export const SECTION_COMMAND = 2;
export const SECTION_MAILBOX = 3;

export const VALUE_ENTRY_SIZE = 20;
export const COMMAND_ENTRY_SIZE = 16;
export const LEGACY_MAILBOX_ENTRY_SIZE = 16;

/** Value flags, command flags, auth levels and mailbox modes as the HSX executive defines them. */
export const VALUE_FLAGS = { RO: 0x01, PERSIST: 0x02, STICKY: 0x04, PIN: 0x08, BOOL: 0x10 } as const;
export const COMMAND_FLAGS = { PIN: 0x01, ASYNC: 0x02 } as const;
export const AUTH_LEVELS = { PUBLIC: 0, USER: 1, ADMIN: 2, FACTORY: 3 } as const;
export const MAILBOX_MODES = {
  RDONLY: 0x01, WRONLY: 0x02, RDWR: 0x03, TAP: 0x04, FANOUT: 0x08, FANOUT_DROP: 0x10, FANOUT_BLOCK: 0x20,
} as const;
export const MAILBOX_MODE_ALL = 0x3f;
export const MAILBOX_NAMESPACES = ['pid:', 'svc:', 'app:', 'shared:'] as const;
export const MAILBOX_NAME_MAX_BYTES = 32;
/** Capacity 0 in an image means "the executive's default" (HSX_MBX_DEFAULT_RING_CAPACITY). */
export const MAILBOX_DEFAULT_CAPACITY = 64;

export const DEFAULT_LIMITS: HxeLimits = { maxCode: 0x10000, maxRodata: 0x10000, maxBss: 0x10000 };

export function resolveLimits(limits?: Partial<HxeLimits>): HxeLimits {
  return { ...DEFAULT_LIMITS, ...(limits ?? {}) };
}
