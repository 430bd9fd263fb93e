/**
 * Unix-socket listeners must never destroy what is at their path: a regular file is refused, a
 * socket someone is listening on is refused, and only a stale socket (nobody answers) is removed.
 */
import { chmodSync, lstatSync, unlinkSync } from "node:fs";

export class UnixSocketError extends Error {
  override name = "UnixSocketError";
}

export async function prepareUnixPath(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw new UnixSocketError(`cannot inspect ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!isSocket)
    throw new UnixSocketError(`${path} exists and is not a socket; refusing to replace it`);
  let live = false;
  try {
    const probe = await Bun.connect({ unix: path, socket: { data() {} } });
    probe.end();
    live = true;
  } catch {
    live = false;
  }
  if (live) throw new UnixSocketError(`${path}: another process is listening on this socket`);
  unlinkSync(path);
}

export function setSocketMode(path: string, mode: number): void {
  chmodSync(path, mode);
}

/** Removes our socket at exit, unless something else has replaced it. */
export function removeSocket(path: string, inode: number): void {
  try {
    const st = lstatSync(path);
    if (st.isSocket() && st.ino === inode) unlinkSync(path);
  } catch {
    /* already gone */
  }
}

export function socketInode(path: string): number {
  return lstatSync(path).ino;
}
