/**
 * Bodies crm holds in memory (a manifest being read, a cached manifest or a shared upstream answer
 * on its way to clients), bounded as a whole. `mirror.manifest_cache.max_size` bounds what stays
 * cached, not what is being read or sent: N clients that ask for N different 4 MiB manifests and
 * never read would otherwise pin N × 4 MiB. And Bun copies a Uint8Array given to `new Response()`
 * (measured: 200 responses of one 4 MiB manifest took 1.2 GB of RSS), so a large body goes out as
 * a stream of views into the one buffer, charged to the budget until it is sent or abandoned.
 * Past the budget the caller streams from the upstream instead (backpressure bounds that).
 */

/** Every manifest read and every large in-memory body in flight, together. */
export const MEMORY_BUDGET = 64 * 1024 * 1024;
/** Up to this size a copy is cheaper than a stream (http/response.ts sends it with the head). */
const COPY_LIMIT = 16 * 1024;
/** One view per pull: the writer asks for the next only when the client took the last. */
const PIECE = 64 * 1024;

export class MemoryBudget {
  used = 0;
  constructor(readonly max = MEMORY_BUDGET) {}

  take(n: number): boolean {
    if (this.used + n > this.max) return false;
    this.used += n;
    return true;
  }

  give(n: number): void {
    this.used -= n;
  }
}

/** The body for `bytes`, or null when the budget is spent (the caller streams from upstream). */
export function memoryBody(
  bytes: Uint8Array,
  budget: MemoryBudget,
): Uint8Array | ReadableStream<Uint8Array> | null {
  if (bytes.byteLength <= COPY_LIMIT) return bytes;
  if (!budget.take(bytes.byteLength)) return null;
  let offset = 0;
  let charged = true;
  const release = (): void => {
    if (charged) budget.give(bytes.byteLength);
    charged = false;
  };
  return new ReadableStream<Uint8Array>(
    {
      pull(c) {
        if (offset >= bytes.byteLength) {
          release();
          return c.close();
        }
        c.enqueue(bytes.subarray(offset, offset + PIECE));
        offset += PIECE;
      },
      cancel: release,
    },
    { highWaterMark: 0 },
  );
}
