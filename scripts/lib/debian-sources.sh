# Shared by scripts/docker-build.sh and scripts/setup.sh: apt sources for
# another Debian suite derived from this machine's own (no mirror host name
# is ever written down), and a minbase rootfs built from them. The caller
# defines die().

# Prints one-line apt sources ("deb [signed-by=...] URI SUITE COMPONENTS"), one
# per URI and suite, from this machine's own configuration, with the release
# codename in each suite replaced by $1 (bookworm-security -> trixie-security).
machine_sources() {
  local codename=$1 deb822=/etc/apt/sources.list.d/debian.sources
  if [ -f "$deb822" ]; then
    awk -v codename="$codename" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "") {
          n = split(uris, u, " "); m = split(suites, s, " ")
          opt = (signed == "" ? "" : "[signed-by=" signed "] ")
          for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
            suite = s[j]; sub(/^[a-z]+/, codename, suite)
            print "deb " opt u[i] " " suite " " (comps == "" ? "main" : comps)
          }
        }
        types = uris = suites = comps = signed = ""
      }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      { key = $1; sub(/:$/, "", key); $1 = ""; sub(/^[[:space:]]+/, "")
        if (key == "Types") types = $0; else if (key == "URIs") uris = $0
        else if (key == "Suites") suites = $0; else if (key == "Components") comps = $0
        else if (key == "Signed-By" && $0 ~ /^\//) signed = $0 }
      END { flush() }
    ' "$deb822"
  elif [ -f /etc/apt/sources.list ]; then
    # deb [options] URI SUITE COMPONENTS...
    awk -v codename="$codename" '$1 == "deb" {
      i = 2; opt = ""
      if ($2 ~ /^\[/) { while ($i !~ /\]$/) { opt = opt $i " "; i++ } opt = opt $i " "; i++ }
      suite = $(i + 1); sub(/^[a-z]+/, codename, suite)
      line = "deb " opt $i " " suite; for (k = i + 2; k <= NF; k++) line = line " " $k
      print line
    }' /etc/apt/sources.list
  fi
}

# suite_sources SUITE: the apt sources for SUITE, from machine_sources. For
# sid+experimental: the machine's main archive with suite sid, and the same
# with suite experimental (neither has -updates or -security suites).
suite_sources() {
  case $1 in
    *+experimental)
      machine_sources "${1%+experimental}" | awk -v s=" ${1%+experimental} " 'index($0, s) {
        print; sub(s, " experimental "); print
      }' ;;
    *) machine_sources "$1" ;;
  esac
}

# rootfs SUITE OUT.tar PACKAGES [mmdebstrap options...]: a minbase Debian
# rootfs with PACKAGES, no docs, man pages or locales, no apt lists or caches.
rootfs() {
  local suite=$1 out=$2 packages=$3
  shift 3
  local sources hooks=() aptopts=()
  mapfile -t sources < <(suite_sources "$suite")
  # sid and experimental are signed for a week at a time: a mirror that is a
  # snapshot serves them with an expired Valid-Until.
  if [[ $suite == *+experimental ]]; then
    aptopts+=(--aptopt='Acquire::Check-Valid-Until "false"')
    suite=${suite%+experimental}
  fi
  [ ${#sources[@]} -gt 0 ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
  # Merged /usr by symlinks (debootstrap's way) rather than the usrmerge
  # package, which would pull perl (about 50 MB) into the image.
  local merged_usr=/usr/share/mmdebstrap/hooks/merged-usr
  [ -d "$merged_usr" ] && hooks+=(--hook-dir="$merged_usr")
  # shellcheck disable=SC2016 # "$1" is the hook's argument, not ours
  mmdebstrap --quiet --variant=minbase "${hooks[@]}" "${aptopts[@]}" \
    --include="$packages" \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb "$1"/var/log/*.log' \
    "$@" "$suite" "$out" "${sources[@]}"
}
