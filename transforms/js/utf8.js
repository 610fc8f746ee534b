// Strict UTF-8 <-> string conversion for engines without TextEncoder/TextDecoder.

// Decodes UTF-8 bytes; throws on invalid input (overlongs, surrogates, truncation).
export function decodeUtf8(b) {
  let s = "";
  let i = 0;
  const n = b.length;
  while (i < n) {
    const c = b[i];
    let cp, len;
    if (c < 0x80) { s += String.fromCharCode(c); i++; continue; }
    else if ((c & 0xe0) === 0xc0) { cp = c & 0x1f; len = 2; }
    else if ((c & 0xf0) === 0xe0) { cp = c & 0x0f; len = 3; }
    else if ((c & 0xf8) === 0xf0) { cp = c & 0x07; len = 4; }
    else throw new Error("invalid UTF-8");
    if (i + len > n) throw new Error("invalid UTF-8");
    for (let k = 1; k < len; k++) {
      const d = b[i + k];
      if ((d & 0xc0) !== 0x80) throw new Error("invalid UTF-8");
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((len === 2 && cp < 0x80) || (len === 3 && cp < 0x800) || (len === 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp < 0xe000)) throw new Error("invalid UTF-8");
    s += String.fromCodePoint(cp);
    i += len;
  }
  return s;
}

// Encodes a string as UTF-8 (lone surrogates become U+FFFD, as TextEncoder does).
export function encodeUtf8(s) {
  const out = [];
  for (let i = 0; i < s.length; i++) {
    let cp = s.charCodeAt(i);
    if (cp >= 0xd800 && cp < 0xdc00 && i + 1 < s.length) {
      const lo = s.charCodeAt(i + 1);
      if (lo >= 0xdc00 && lo < 0xe000) { cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00); i++; }
      else cp = 0xfffd;
    } else if (cp >= 0xd800 && cp < 0xe000) cp = 0xfffd;
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return new Uint8Array(out);
}
