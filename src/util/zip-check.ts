/**
 * A structural check of a zip archive before it is handed to fflate's unzipSync, which trusts
 * the central directory: on malformed archives it can loop forever (the zip64 extra-field search)
 * or allocate whatever size a header claims. Returns a problem description, or null when every
 * central-directory entry, its local header and its data lie inside the buffer.
 */
const EOCD = 0x06054b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
/** Deflate cannot expand data by more than about 1032:1. */
const MAX_DEFLATE_RATIO = 1032;

export function zipStructureProblem(b: Uint8Array): string | null {
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const u32 = (o: number) => dv.getUint32(o, true);
  const u16 = (o: number) => dv.getUint16(o, true);
  if (b.length < 22) return 'too short for a zip archive';
  let e = b.length - 22;
  while (e >= 0 && u32(e) !== EOCD) {
    if (b.length - e > 65557) return 'no end-of-central-directory record';
    e--;
  }
  if (e < 0) return 'no end-of-central-directory record';
  // Read the entry count and directory offset exactly where fflate reads them: the end record
  // (entries on this disk), or the zip64 end record when a zip64 locator precedes it (torch.save
  // writes one), whose 64-bit count fflate reads as 32 bits.
  let count = u16(e + 8);
  let cdOff = u32(e + 16);
  if (e >= 20 && u32(e - 20) === 0x07064b50) {
    const ze = u32(e - 12);
    if (ze + 56 > e) return `zip64 end record offset ${ze} is outside the archive`;
    if (u32(ze) === 0x06064b50) {
      count = u32(ze + 32);
      cdOff = u32(ze + 48);
    }
  }
  if (cdOff > e) return `central directory offset ${cdOff} is past the end record at ${e}`;
  let o = cdOff;
  for (let i = 0; i < count; i++) {
    if (o + 46 > e || u32(o) !== CENTRAL) return `central directory entry ${i} is missing or damaged (at byte ${o})`;
    const method = u16(o + 10);
    const csize = u32(o + 20);
    const usize = u32(o + 24);
    const nameLen = u16(o + 28);
    const next = o + 46 + nameLen + u16(o + 30) + u16(o + 32);
    const local = u32(o + 42);
    if (csize === 0xffffffff || usize === 0xffffffff || local === 0xffffffff) return `entry ${i} uses zip64 sizes, which are not supported`;
    if (next > e) return `central directory entry ${i} runs past the directory`;
    if (method !== 0 && method !== 8) return `entry ${i} uses compression method ${method} (expected stored or deflate)`;
    if (method === 0 && csize !== usize) return `entry ${i} is stored but its sizes differ (${csize} and ${usize})`;
    if (method === 8 && usize > csize * MAX_DEFLATE_RATIO + 1024) return `entry ${i} claims ${usize} bytes from ${csize} compressed bytes`;
    if (local + 30 > b.length || u32(local) !== LOCAL) return `entry ${i}: local header at ${local} is missing or damaged`;
    const data = local + 30 + u16(local + 26) + u16(local + 28);
    if (data + csize > b.length) return `entry ${i}: data (${csize} bytes at ${data}) runs past the end of the file`;
    o = next;
  }
  return null;
}
