/**
 * Reads a body that should be small (a token answer, an upstream error) without trusting the
 * upstream about its size or pace: past `limit` bytes, or after `timeoutMs`, the read stops and
 * the stream is cancelled, so a misbehaving upstream can make crm neither buffer megabytes nor
 * wait forever for a few bytes.
 */
export async function readSmallBody(
  res: Response,
  limit: number,
  timeoutMs: number,
): Promise<{ bytes: Uint8Array; truncated: boolean }> {
  if (res.body === null) return { bytes: new Uint8Array(0), truncated: false };
  const reader = res.body.getReader();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    // A pending read() then resolves as done.
    void reader.cancel().catch(() => {});
  }, timeoutMs);
  const parts: Uint8Array[] = [];
  let size = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (size + value.byteLength > limit) {
        parts.push(value.subarray(0, limit - size));
        size = limit;
        await reader.cancel().catch(() => {});
        return { bytes: concat(parts, size), truncated: true };
      }
      parts.push(value);
      size += value.byteLength;
    }
  } catch {
    // The upstream broke off: what arrived is incomplete.
    return { bytes: concat(parts, size), truncated: true };
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  return { bytes: concat(parts, size), truncated: timedOut };
}

function concat(parts: Uint8Array[], size: number): Uint8Array {
  const out = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}
