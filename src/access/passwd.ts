/**
 * `crm passwd NAME`: reads a password and prints the `access.users` line for it. The hash is
 * argon2id (Bun.password's default); the password itself is never printed or stored.
 */
export async function runPasswd(
  name: string,
  input: NodeJS.ReadStream = process.stdin,
): Promise<number> {
  let password: string;
  if (input.isTTY) {
    process.stderr.write("Note: the password is echoed as you type.\n");
    const first = prompt("Password:") ?? "";
    const again = prompt("Again:") ?? "";
    if (first !== again) {
      process.stderr.write("crm: passwords do not match\n");
      return 1;
    }
    password = first;
  } else {
    password = (await new Response(Bun.stdin.stream()).text()).replace(/\r?\n$/, "");
  }
  if (password.length < 8) {
    process.stderr.write("crm: password must be at least 8 characters\n");
    return 1;
  }
  const hash = await Bun.password.hash(password, { algorithm: "argon2id" });
  process.stdout.write(`# under access.users in the config:\n    ${name}: "${hash}"\n`);
  return 0;
}
