#!/usr/bin/env bash
# Write a Janus configuration for the side-by-side benchmark into the folder $1: the HTTP API on
# 127.0.0.1:${JANUS_PORT:-8088}, media ports 40000-40999 on the interface $2 only, only the
# videoroom plugin and the HTTP transport loaded, logging quiet so it costs nothing.
#
# Janus's ICE (libnice) never gathers loopback addresses, so benches/compare gives it a veth
# interface holding 127.0.0.2: every packet of the benchmark still goes between 127.0.0.0/8
# addresses on this machine.
set -euo pipefail
dir=$1
iface=$2
port=${JANUS_PORT:-8088}
lib=$(dirname "$(find /usr/lib -path '*janus/plugins/libjanus_videoroom.so' | head -1)")/..
mkdir -p "$dir"
disable_in() {
    # Every module in folder $1 but $2, comma-separated, for the 'disable' setting.
    find "$lib/$1" -maxdepth 1 -name 'libjanus_*.so' -printf '%f\n' | grep -vx "$2" | paste -sd, -
}
cat >"$dir/janus.jcfg" <<EOF
general: {
	configs_folder = "$dir"
	plugins_folder = "$lib/plugins"
	transports_folder = "$lib/transports"
	events_folder = "$lib/events"
	loggers_folder = "$lib/loggers"
	debug_level = 2
	session_timeout = 120
}
media: {
	rtp_port_range = "40000-40999"
}
nat: {
	ice_enforce_list = "$iface"
	ignore_mdns = true
}
plugins: {
	disable = "$(disable_in plugins libjanus_videoroom.so)"
}
transports: {
	disable = "$(disable_in transports libjanus_http.so)"
}
events: {
	broadcast = false
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
EOF
cat >"$dir/janus.transport.http.jcfg" <<EOF
general: {
	json = "plain"
	base_path = "/janus"
	http = true
	port = $port
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
}
EOF
cat >"$dir/janus.plugin.videoroom.jcfg" <<EOF
general: {
}
EOF
