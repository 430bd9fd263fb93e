#!/bin/sh
# Installs crm as a systemd service:
#   BINARY                       -> /usr/local/bin/crm (0755; via a temp file + mv, so a running
#                                   crm keeps its old inode)
#   user and group crm           (system account, no shell, no home)
#   /etc/crm                     (0750 root:crm)
#   /etc/crm/config.yaml         (0640 root:crm) from config.example.yaml, ONLY if absent: an
#                                 existing config is never touched
#   /etc/systemd/system/crm.service   from deploy/crm.service, when systemd is present
#   /usr/local/share/doc/crm/README.md
# then checks the config with `crm -t` as user crm and prints the next steps.
#
# Usage: sudo sh scripts/install.sh [--dry-run] BINARY
#
# Environment:
#   CRM_ROOT=/some/dir   install below this directory instead of / (staging, packaging, tests);
#                        then no user is created and no owner is changed (modes are still set)
#   CRM_SYSTEMD=auto|yes|no   install the unit: auto (default) = when systemd is present
#
# config.example.yaml and deploy/crm.service are looked up beside BINARY and in this script's
# directory and its parent (the layout of the release archives and of the source tree).
set -eu

prog=install.sh
die() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	exit 1
}
say() { printf '%s\n' "$*"; }

usage() {
	cat <<'EOF'
usage: install.sh [--dry-run] BINARY
  Installs BINARY as /usr/local/bin/crm, creates user crm and /etc/crm, writes
  /etc/crm/config.yaml only if it does not exist, installs the systemd unit.
  --dry-run   print what would be done, change nothing
  env CRM_ROOT=DIR    install below DIR instead of / (no user, no chown)
  env CRM_SYSTEMD=auto|yes|no   install the systemd unit (default: if systemd is present)
EOF
}

dry_run=0
binary=
while [ $# -gt 0 ]; do
	case "$1" in
	--dry-run | -n) dry_run=1 ;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		break
		;;
	-*)
		usage >&2
		die "unknown option $1"
		;;
	*)
		[ -z "$binary" ] || die "only one BINARY may be given (got $binary and $1)"
		binary=$1
		;;
	esac
	shift
done
if [ $# -gt 0 ]; then
	if [ -n "$binary" ] || [ $# -ne 1 ]; then
		die "only one BINARY may be given"
	fi
	binary=$1
fi
if [ -z "$binary" ]; then
	usage >&2
	die "no BINARY given (the crm executable for this machine, e.g. ./crm from the release archive)"
fi

# --- the binary must be a runnable crm for this machine --------------------------------------
[ -e "$binary" ] || die "$binary does not exist"
[ -f "$binary" ] || die "$binary is not a regular file"
[ -x "$binary" ] || die "$binary is not executable (chmod +x it, or use the crm from the release archive)"
if ! version=$("$binary" --version 2>&1); then
	die "$binary does not run on this machine (wrong platform or architecture?): $version"
fi
case "$version" in
crm\ *) ;;
*) die "$binary does not look like crm: '$binary --version' printed: $version" ;;
esac

root=${CRM_ROOT:-}
root=${root%/}
staging=0
[ -n "$root" ] && staging=1
if [ "$staging" -eq 0 ] && [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
	die "must run as root (sudo sh $0 $binary), or set CRM_ROOT=DIR to install below DIR"
fi

bin_dest="$root/usr/local/bin/crm"
etc_dir="$root/etc/crm"
config="$etc_dir/config.yaml"
unit_dest="$root/etc/systemd/system/crm.service"
doc_dir="$root/usr/local/share/doc/crm"

script_dir=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
binary_dir=$(CDPATH='' cd -- "$(dirname -- "$binary")" && pwd)

# first existing file among candidates
find_file() {
	for f in "$@"; do
		if [ -f "$f" ]; then
			printf '%s\n' "$f"
			return 0
		fi
	done
	return 1
}
example=$(find_file "$binary_dir/config.example.yaml" "$script_dir/../config.example.yaml" "$script_dir/config.example.yaml") || example=
unit_src=$(find_file "$binary_dir/deploy/crm.service" "$script_dir/../deploy/crm.service" "$script_dir/crm.service") || unit_src=
readme=$(find_file "$binary_dir/README.md" "$script_dir/../README.md") || readme=

# run CMD...: print it; run it unless --dry-run
run() {
	if [ "$dry_run" -eq 1 ]; then
		say "would run: $*"
	else
		"$@"
	fi
}

# install_file SRC DEST MODE: copy to a temp file beside DEST, set the mode, rename over DEST.
# rename(2) is atomic and leaves a running program's old file intact (no "text file busy").
install_file() {
	src=$1 dest=$2 mode=$3
	if [ "$dry_run" -eq 1 ]; then
		say "would install: $src -> $dest (mode $mode)"
		return 0
	fi
	tmp="$dest.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	cp "$src" "$tmp"
	chmod "$mode" "$tmp"
	mv -f "$tmp" "$dest"
	trap - EXIT
	say "installed $dest"
}

has_systemd() {
	case "${CRM_SYSTEMD:-auto}" in
	yes | 1 | true) return 0 ;;
	no | 0 | false) return 1 ;;
	auto)
		[ -d /run/systemd/system ] || command -v systemctl >/dev/null 2>&1 || [ -d "$root/etc/systemd/system" ]
		;;
	*) die "CRM_SYSTEMD must be auto, yes or no (got ${CRM_SYSTEMD:-})" ;;
	esac
}

[ "$dry_run" -eq 1 ] && say "dry run: nothing will be changed"
[ "$staging" -eq 1 ] && say "installing below $root (CRM_ROOT): no user is created and no owner changed"
say "installing $version"

# --- binary ----------------------------------------------------------------------------------
run mkdir -p "$root/usr/local/bin"
install_file "$binary" "$bin_dest" 0755

# --- user and group --------------------------------------------------------------------------
if [ "$staging" -eq 0 ]; then
	if ! getent group crm >/dev/null 2>&1; then
		if command -v groupadd >/dev/null 2>&1; then
			run groupadd --system crm
		else
			run addgroup -S crm # busybox / Alpine
		fi
		[ "$dry_run" -eq 1 ] || say "created system group crm"
	fi
	if ! getent passwd crm >/dev/null 2>&1; then
		nologin=$(command -v nologin 2>/dev/null || echo /usr/sbin/nologin)
		if command -v useradd >/dev/null 2>&1; then
			run useradd --system --gid crm --no-create-home --home-dir /nonexistent --shell "$nologin" --comment "crm registry proxy" crm
		else
			run adduser -S -D -H -h /nonexistent -s "$nologin" -G crm crm # busybox / Alpine
		fi
		[ "$dry_run" -eq 1 ] || say "created system user crm (no shell, no home)"
	else
		say "user crm exists"
	fi
fi

# --- /etc/crm and the config -----------------------------------------------------------------
if [ -d "$etc_dir" ]; then
	say "$etc_dir exists, mode and owner left as they are"
else
	run mkdir -p "$etc_dir"
	run chmod 0750 "$etc_dir"
	[ "$staging" -eq 0 ] && run chown root:crm "$etc_dir"
fi

if [ -e "$config" ] || [ -L "$config" ]; then
	say "kept existing $config (never overwritten; compare with ${example:-config.example.yaml} after upgrades)"
else
	if [ "$dry_run" -eq 1 ]; then
		say "would write $config from ${example:-a built-in minimal config} (mode 0640)"
	else
		tmp="$config.tmp.$$"
		trap 'rm -f "$tmp"' EXIT
		if [ -n "$example" ]; then
			cp "$example" "$tmp"
		else
			cat >"$tmp" <<'EOF'
# crm configuration (minimal; config.example.yaml in the release archive documents every key).
# Loopback only until you decide who may use this proxy; ":8080" listens on all interfaces.
listen: "127.0.0.1:8080"
log_level: info
timeouts:
  shutdown_grace: 30s
EOF
		fi
		chmod 0640 "$tmp"
		[ "$staging" -eq 0 ] && chown root:crm "$tmp"
		# ln fails if the name appeared meanwhile: an existing config can never be replaced.
		if ln "$tmp" "$config" 2>/dev/null; then
			rm -f "$tmp"
		else
			rm -f "$tmp"
			die "could not create $config"
		fi
		trap - EXIT
		say "wrote $config from ${example:-a built-in minimal config}"
	fi
fi

# --- systemd unit and docs -------------------------------------------------------------------
unit_installed=0
if has_systemd; then
	if [ -z "$unit_src" ]; then
		say "warning: deploy/crm.service not found beside $binary or $0; systemd unit not installed" >&2
	else
		run mkdir -p "$root/etc/systemd/system"
		if [ -f "$unit_dest" ] && cmp -s "$unit_src" "$unit_dest"; then
			say "$unit_dest is up to date"
		else
			[ -f "$unit_dest" ] && say "replacing $unit_dest (put local changes in a drop-in: systemctl edit crm)"
			install_file "$unit_src" "$unit_dest" 0644
		fi
		unit_installed=1
	fi
else
	say "systemd not found: no unit installed (run: $bin_dest -config $config)"
fi
if [ -n "$readme" ]; then
	run mkdir -p "$doc_dir"
	install_file "$readme" "$doc_dir/README.md" 0644
fi

# --- check the config as the service will see it ---------------------------------------------
if [ "$dry_run" -eq 1 ]; then
	say "would run: $bin_dest -t -config $config"
elif [ "$staging" -eq 0 ] && command -v runuser >/dev/null 2>&1; then
	# As user crm: also proves crm can read the config and the files it names.
	runuser -u crm -- "$bin_dest" -t -config "$config" || die "config check failed: fix $config, then: $bin_dest -t -config $config"
else
	"$bin_dest" -t -config "$config" || die "config check failed: fix $config, then: $bin_dest -t -config $config"
fi

if [ "$dry_run" -eq 1 ]; then
	printf '\ndry run: nothing was changed. After a real install:\n'
else
	printf '\ncrm is installed. Next steps:\n'
fi
cat <<EOF
  1. edit $config (listen, allowed_hosts, access); check it: crm -t -config /etc/crm/config.yaml
EOF
if [ "$unit_installed" -eq 1 ]; then
	cat <<'EOF'
  2. systemctl daemon-reload && systemctl enable --now crm
  3. systemctl status crm; journalctl -u crm -f
  after config changes: systemctl reload crm; after upgrading the binary: systemctl restart crm
EOF
else
	say "  2. run: /usr/local/bin/crm -config /etc/crm/config.yaml"
fi
