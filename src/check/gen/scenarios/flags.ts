// Guest PTE flags the built-in scenarios use for data pages.

/** Present, writable, user, accessed, dirty. */
export const DATA_FLAGS = 0x67n;
