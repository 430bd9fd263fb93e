/**
 * The SSRF guard's decisions, one row per IANA special-purpose block (Globally Reachable column)
 * and per IPv6 form that embeds an IPv4 address. Only decisions are checked: no address here is
 * ever dialled.
 */
import { describe, expect, test } from "bun:test";
import { NON_PUBLIC } from "../src/access/cidr.ts";
import { PrivateAddressError } from "../src/errors.ts";
import { guardedResolver, staticResolver } from "../src/net/resolver.ts";

describe("SSRF guard: IANA special-purpose registries", () => {
  test.each([
    // IPv4, Globally Reachable = False
    ["0.1.2.3", "0.0.0.0/8"],
    ["10.200.0.1", "10.0.0.0/8"],
    ["100.127.255.254", "100.64.0.0/10"],
    ["127.8.8.8", "127.0.0.0/8"],
    ["169.254.169.254", "169.254.0.0/16"],
    ["172.31.0.1", "172.16.0.0/12"],
    ["192.0.0.1", "192.0.0.0/24"],
    ["192.0.0.8", "192.0.0.0/24"],
    ["192.0.0.170", "192.0.0.0/24"],
    ["192.0.2.10", "192.0.2.0/24"],
    ["192.88.99.1", "192.88.99.0/24"],
    ["192.168.1.1", "192.168.0.0/16"],
    ["198.18.0.1", "198.18.0.0/15"],
    ["198.19.255.255", "198.18.0.0/15"],
    ["198.51.100.7", "198.51.100.0/24"],
    ["203.0.113.9", "203.0.113.0/24"],
    ["224.0.0.251", "224.0.0.0/4"],
    ["240.0.0.1", "240.0.0.0/4"],
    ["255.255.255.255", "240.0.0.0/4"],
    // IPv6, Globally Reachable = False
    ["::", "::/128"],
    ["::1", "::1/128"],
    ["::a9fe:a9fe", "::/96"], // IPv4-compatible 169.254.169.254
    ["::10.0.0.1", "::/96"],
    ["::8.8.8.8", "::/96"], // deprecated form, refused whatever it embeds
    ["::ffff:0:a9fe:a9fe", "::ffff:0:0:0/96"], // IPv4-translated
    ["64:ff9b:1::1", "64:ff9b:1::/48"],
    ["100::1", "100::/64"],
    ["100:0:0:1::1", "100:0:0:1::/64"],
    ["2001::1", "2001::/23"], // Teredo
    ["2001:1::4", "2001::/23"],
    ["2001:2::1", "2001:2::/48"],
    ["2001:10::1", "2001:10::/28"],
    ["2001:1ff::1", "2001::/23"],
    ["2001:db8::1", "2001:db8::/32"],
    ["2002:a00:1::1", "2002::/16"], // 6to4
    ["2002:808:808::1", "2002::/16"],
    ["3fff::1", "3fff::/20"],
    ["5f00::1", "5f00::/16"],
    ["fd12:3456::1", "fc00::/7"],
    ["fe80::1%eth0", "fe80::/10"],
    ["fec0::1", "fec0::/10"],
    ["feff::1", "fec0::/10"],
    ["ff02::1", "ff00::/8"],
    // IPv4-mapped and NAT64: judged by the embedded IPv4 address
    ["::ffff:127.0.0.1", "127.0.0.0/8"],
    ["::ffff:a9fe:a9fe", "169.254.0.0/16"],
    ["64:ff9b::a9fe:a9fe", "64:ff9b::/96 embedding 169.254.0.0/16"],
    ["64:ff9b::10.1.2.3", "64:ff9b::/96 embedding 10.0.0.0/8"],
    ["64:ff9b::192.0.2.1", "64:ff9b::/96 embedding 192.0.2.0/24"],
  ])("%s is refused (in %s)", (address, range) => {
    expect(NON_PUBLIC.match(address)).toEqual({ source: range });
  });

  test.each([
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",
    "100.128.0.0",
    "172.32.0.1",
    "192.0.0.9", // PCP anycast: True inside 192.0.0.0/24
    "192.0.0.10", // TURN anycast
    "192.0.1.1",
    "192.31.196.1",
    "198.17.255.255",
    "198.20.0.0",
    "223.255.255.255",
    "::ffff:8.8.8.8",
    "64:ff9b::8.8.8.8", // NAT64 of a public address: how an IPv6-only host reaches IPv4 registries
    "2001:1::1",
    "2001:1::2",
    "2001:1::3",
    "2001:3::1",
    "2001:4:112::1",
    "2001:20::1",
    "2001:30::1",
    "2001:200::1",
    "2606:4700::1111",
    "2a00:1450:4001::1",
  ])("%s is globally reachable", (address) => {
    expect(NON_PUBLIC.match(address)).toBeNull();
  });

  test("the resolver refuses what the guard refuses, naming the range, before any dial", async () => {
    const resolve = guardedResolver(
      staticResolver({
        "meta.test": "fec0::1",
        "nat64.test": "64:ff9b::a9fe:a9fe",
        "ok.test": "64:ff9b::808:808",
      }),
      () => false,
    );
    const err = await resolve("meta.test").catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PrivateAddressError);
    expect((err as PrivateAddressError).range).toBe("fec0::/10");
    expect(
      ((await resolve("nat64.test").catch((e: unknown) => e)) as PrivateAddressError).range,
    ).toBe("64:ff9b::/96 embedding 169.254.0.0/16");
    expect(await resolve("ok.test")).toBe("64:ff9b::808:808");
  });
});
