export { loadCa, parseCa, caWarnings, type Ca } from "./ca.ts";
export * from "./errors.ts";
export {
  LeafIssuer,
  CertCache,
  InvalidHostError,
  normalizeHost,
  type IssuedCert,
  type LeafOptions,
  type CertCacheOptions,
  type Host,
} from "./leaf.ts";
export {
  initCa,
  trustInstructions,
  selfSignedCa,
  DEFAULT_CA_CN,
  DEFAULT_CA_DAYS,
  type InitCaOptions,
} from "./init.ts";
