/**
 * Opens a TCP connection to an upstream for a tunnel, with a deadline. Failures become a
 * DialError whose reason picks the status: refused/DNS → 502, timeout → 504.
 */
import type { Socket, SocketHandler } from "bun";
import {
  classifyNetworkError,
  DialError,
  PrivateAddressError,
  SelfTargetError,
} from "../errors.ts";
import type { Resolver } from "./resolver.ts";
import { formatHostPort } from "./host-port.ts";

/**
 * Looks `host` up for `target`: a refusal by the SSRF guard becomes DialError "private", a target
 * that is crm itself "self" (net/self-targets.ts), any
 * other lookup failure "dns". Shared by tunnels and fetch so both answer alike.
 */
export function lookupTarget(resolve: Resolver, host: string, target: string): Promise<string> {
  return resolve(host).catch((cause: unknown) => {
    throw new DialError(
      cause instanceof PrivateAddressError
        ? "private"
        : cause instanceof SelfTargetError
          ? "self"
          : "dns",
      target,
      { cause },
    );
  });
}

/** Resolves `host` and connects, both within `timeoutMs`. */
export async function dial<T>(
  resolve: Resolver,
  host: string,
  port: number,
  timeoutMs: number,
  handlers: SocketHandler<T>,
  data: T,
): Promise<Socket<T>> {
  const target = formatHostPort(host, port);
  let timer: Timer | undefined;
  let timedOut = false;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new DialError("timeout", target));
    }, timeoutMs);
  });
  const connecting = lookupTarget(resolve, host, target).then((address) =>
    Bun.connect<T>({ hostname: address, port, allowHalfOpen: true, socket: handlers, data }),
  );
  // A dial that completes after its deadline must not leak a socket.
  connecting.then(
    (s) => {
      if (timedOut) s.terminate();
    },
    () => {},
  );
  try {
    return await Promise.race([connecting, timeout]);
  } catch (e) {
    if (e instanceof DialError) throw e;
    throw new DialError(classifyNetworkError(e), target, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}
