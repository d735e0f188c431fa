#!/usr/bin/env bash
# Renders a soak's resources.csv (docs/soak.md, "Reading resources.csv") as a PNG with three
# panels — descriptors, memory, connected subscribers — and as an ASCII plot of the same
# descriptors and memory for a terminal or a Markdown code block.
#
#   bench/soak-plot.sh DIR/resources.csv OUT_PREFIX
#     writes OUT_PREFIX.png and OUT_PREFIX.txt
#
# Hubs are summed (clients move between hubs with every kill and drain; the sum holds each
# client once); a second in which a hub was down has no sum, so it is left out rather than
# drawn as a dip. Needs gnuplot (Debian: apt-get install gnuplot-nox).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 RESOURCES_CSV OUT_PREFIX" >&2
  exit 2
fi
csv=$1
out=$2
command -v gnuplot >/dev/null || { echo "$0: gnuplot not found (apt-get install gnuplot-nox)" >&2; exit 1; }
[ -r "$csv" ] || { echo "$0: cannot read $csv" >&2; exit 1; }

header=$(head -n 1 "$csv")
# The column number of a header name, so the script follows the CSV rather than a fixed
# layout (the number of hubs is a soak option).
col() {
  local n
  n=$(tr ',' '\n' <<<"$header" | grep -nx "$1" | cut -d: -f1)
  [ -n "$n" ] || { echo "$0: no column $1 in $csv" >&2; exit 1; }
  echo "$n"
}
sum_of() { # sum_of SUFFIX: "($a+$b+…)" over every hubN_SUFFIX column
  local terms=()
  for name in $(tr ',' '\n' <<<"$header" | grep -E "^hub[0-9]+_$1\$"); do
    terms+=("\$$(col "$name")")
  done
  [ ${#terms[@]} -gt 0 ] || { echo "$0: no hub columns in $csv" >&2; exit 1; }
  local IFS=+
  echo "(${terms[*]})"
}

proxy_fds=$(col proxy_fds)
proxy_rss=$(col proxy_rss_kib)
soak_fds=$(col soak_fds)
soak_rss=$(col soak_rss_kib)
redis_rss=$(col redis_rss_kib)
subscribers=$(col subscribers_connected)
hubs_fds=$(sum_of fds)
hubs_rss=$(sum_of rss_kib)

common="set datafile separator ','; set datafile missing ''; set key top left; set grid; \
set xlabel 'seconds of faults'; set yrange [0:*]; set offsets 0, 0, graph 0.08, 0"
fds_plot="plot '$csv' every ::1 using 1:$proxy_fds with lines title 'proxy', \
  '' every ::1 using 1:$hubs_fds with lines title 'hubs (sum)', \
  '' every ::1 using 1:$soak_fds with lines title 'soak (clients)'"
rss_plot="plot '$csv' every ::1 using 1:(\$$proxy_rss/1024) with lines title 'proxy', \
  '' every ::1 using 1:($hubs_rss/1024) with lines title 'hubs (sum)', \
  '' every ::1 using 1:(\$$redis_rss/1024) with lines title 'redis', \
  '' every ::1 using 1:(\$$soak_rss/1024) with lines title 'soak (ledger + clients)'"

gnuplot <<EOF
$common
set terminal pngcairo size 1200,1100 font ',10'
set output '$out.png'
set multiplot layout 3,1 title 'tether bench soak: $(basename "$out")'
set ylabel 'open descriptors'
$fds_plot
set ylabel 'RSS (MiB)'
$rss_plot
set ylabel 'subscribers connected'
plot '$csv' every ::1 using 1:$subscribers with lines title 'connected'
unset multiplot
EOF

gnuplot <<EOF >"$out.txt"
$common
set terminal dumb size 110,28
set title 'open descriptors'
$fds_plot
set title 'RSS (MiB)'
$rss_plot
EOF
echo "wrote $out.png and $out.txt"
