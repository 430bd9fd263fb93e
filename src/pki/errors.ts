// One class per failure so callers (and tests) can tell them apart without parsing messages;
// `code` is there for logs and exit messages, `file` for pointing the operator at the culprit.

export type CaErrorCode =
  | "CA_FILE_MISSING"
  | "CA_FILE_UNREADABLE"
  | "CA_CERT_INVALID"
  | "CA_KEY_INVALID"
  | "CA_KEY_UNSUPPORTED"
  | "CA_KEY_MISMATCH"
  | "CA_NOT_CA"
  | "CA_NO_KEYCERTSIGN"
  | "CA_EXPIRED"
  | "CA_NOT_YET_VALID"
  | "CA_INIT_EXISTS";

export abstract class CaError extends Error {
  abstract readonly code: CaErrorCode;
  constructor(
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}: ${message}`, options);
    this.name = new.target.name;
  }
}

export class CaFileMissingError extends CaError {
  readonly code = "CA_FILE_MISSING";
}
export class CaFileUnreadableError extends CaError {
  readonly code = "CA_FILE_UNREADABLE";
}
export class CaCertInvalidError extends CaError {
  readonly code = "CA_CERT_INVALID";
}
export class CaKeyInvalidError extends CaError {
  readonly code = "CA_KEY_INVALID";
}
export class CaKeyUnsupportedError extends CaError {
  readonly code = "CA_KEY_UNSUPPORTED";
}
export class CaKeyMismatchError extends CaError {
  readonly code = "CA_KEY_MISMATCH";
}
export class CaNotCaError extends CaError {
  readonly code = "CA_NOT_CA";
}
export class CaNoKeyCertSignError extends CaError {
  readonly code = "CA_NO_KEYCERTSIGN";
}
export class CaExpiredError extends CaError {
  readonly code = "CA_EXPIRED";
}
export class CaNotYetValidError extends CaError {
  readonly code = "CA_NOT_YET_VALID";
}
export class CaInitExistsError extends CaError {
  readonly code = "CA_INIT_EXISTS";
}
