/**
 * clientKey for IPv6 addresses that are not one subscriber's /64: link-local neighbours share
 * fe80::/64 and NAT64 clients share 64:ff9b::/64, so the /64 would make them all one client.
 */
import { describe, expect, test } from "bun:test";
import { clientKey } from "../src/access/client-address.ts";
import { RequestRate } from "../src/limits/request-rate.ts";
import { DEFAULT_LIMITS } from "../src/config/types.ts";

describe("clientKey: link-local and NAT64", () => {
  test("fe80::/10 counts by full address", () => {
    expect(clientKey("fe80::1")).toBe("fe80::1");
    expect(clientKey("fe80::2")).toBe("fe80::2");
    expect(clientKey("FE80:0:0:0:0:0:0:2")).toBe("fe80::2");
    expect(clientKey("febf::9")).toBe("febf::9");
    expect(clientKey("fec0::1")).toBe("fec0:0:0:0::/64"); // outside /10
  });
  test("64:ff9b::/96 counts by the embedded IPv4 address", () => {
    expect(clientKey("64:ff9b::192.0.2.1")).toBe("192.0.2.1");
    expect(clientKey("64:ff9b::c000:202")).toBe("192.0.2.2");
    expect(clientKey("64:ff9b:1::c000:202")).toBe("64:ff9b:1:0::/64"); // the local-use /48 is not /96
  });
  test("one link-local neighbour spending the rate does not lock out another", () => {
    const r = new RequestRate({ ...DEFAULT_LIMITS, requestsPerSecond: 1, burst: 1 });
    expect(r.take("fe80::1", 1000)).toBeNull();
    expect(r.take("fe80::1", 1000)).not.toBeNull();
    expect(r.take("fe80::2", 1000)).toBeNull();
    expect(r.take("64:ff9b::192.0.2.1", 1000)).toBeNull();
    expect(r.take("64:ff9b::192.0.2.2", 1000)).toBeNull();
  });
});

describe("networkKey: the stranger budget's network", () => {
  test("IPv4 /24, IPv6 /48, IPv4-mapped as IPv4", async () => {
    const { networkKey } = await import("../src/access/client-address.ts");
    expect(networkKey("192.0.2.7")).toBe("192.0.2.0/24");
    expect(networkKey("::ffff:192.0.2.9")).toBe("192.0.2.0/24");
    expect(networkKey("2001:db8:1:2::1")).toBe("2001:db8:1::/48");
    expect(networkKey("2001:db8:1:ffff::1")).toBe("2001:db8:1::/48");
    expect(networkKey("unix")).toBe("unix");
  });
});
