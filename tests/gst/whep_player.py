#!/usr/bin/python3
"""A WHEP player built the way gst-plugins-rs' whepsrc builds one: a webrtcbin (libnice ICE,
max-bundle) with receive-only transceivers, a non-trickle offer POSTed to `/whep/<room>`, the
answer applied, and a decodebin on every pad webrtcbin adds.

It prints a JSON summary: every pad webrtcbin added (which transceiver webrtcbin routed it to,
its RTP caps, what it decoded to and how much), the offer's m-sections, and whether each
expected m-section's stream decoded on its own transceiver. Exit status 0 only if they all did.

Run it with the system Python (/usr/bin/python3): PyGObject comes from Debian's python3-gi.
"""

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

# whepsrc's default caps (gst-plugins-rs net/webrtchttp/src/whepsrc/imp.rs, Settings::default):
# Opus on payload type 96 and five video codecs on 101-105. Offering what whepsrc offers keeps
# the server's answer the one a whepsrc user gets.
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=96,clock-rate=48000"
VIDEO_CAPS = ";".join(
    f"application/x-rtp,media=video,encoding-name={name},payload={pt},clock-rate=90000"
    for name, pt in [("VP8", 101), ("VP9", 102), ("H264", 103), ("H265", 104), ("AV1", 105)]
)


def log(msg):
    # stderr, so stdout carries the JSON summary alone.
    print(f"[player {time.monotonic():.2f}] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="10.77.0.1:8080", help="host:port of the HTTP listener")
    p.add_argument("--room", default="gst")
    p.add_argument("--order", default="video,audio",
                   help="m-section order within each seat: video,audio or audio,video")
    p.add_argument("--seats", type=int, default=1, help="audio+video pairs to offer")
    p.add_argument("--expect-seats", type=int, default=1,
                   help="how many of the first seats have a publisher, so must decode")
    p.add_argument("--seconds", type=float, default=8.0,
                   help="how long to count after the answer is applied")
    p.add_argument("--bundle-policy", default="max-bundle",
                   choices=["max-bundle", "max-compat", "balanced"],
                   help="webrtcbin's bundle-policy; whepsrc always uses max-bundle, which "
                        "offers every m-section but the first with port 0 and a=bundle-only")
    p.add_argument("--save-offer", help="write the offer sent to this file")
    p.add_argument("--save-answer", help="write the server's answer to this file")
    args = p.parse_args()
    args.kinds = [k.strip() for k in args.order.split(",")]
    if sorted(args.kinds) != ["audio", "video"]:
        p.error("--order must be video,audio or audio,video")
    if args.seats < 1:
        p.error("--seats must be at least 1")
    return args


# --- the player ------------------------------------------------------------------------------

class Player:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipeline = Gst.Pipeline.new("player")
        self.webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
        # WHEP bundles every m-section on one transport; whepsrc sets max-bundle, so webrtcbin
        # offers the second and later m-sections with port 0 and a=bundle-only (RFC 8843 §6).
        policy = {"max-bundle": GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE,
                  "max-compat": GstWebRTC.WebRTCBundlePolicy.MAX_COMPAT,
                  "balanced": GstWebRTC.WebRTCBundlePolicy.BALANCED}[args.bundle_policy]
        self.webrtc.set_property("bundle-policy", policy)
        self.pipeline.add(self.webrtc)
        # Every SSRC the RTP session heard of (RTP or RTCP), whether or not a pad came of it:
        # tells "the server sent nothing" apart from "webrtcbin did not route it".
        self.ssrcs = {}
        rtpbin = self.webrtc.get_by_name("rtpbin")
        if rtpbin is not None:
            rtpbin.connect("on-new-ssrc", self.on_new_ssrc)
        self.lock = threading.Lock()
        self.pads = {}          # webrtcbin src pad name -> record
        self.offer_text = None
        self.answer_text = None
        self.http_status = None
        self.resource = None    # the WHEP session's URL (Location), DELETEd at the end
        self.error = None
        self.answered_at = None
        self.posted = False
        self.layout = []        # (mline, seat, kind) of the offer
        self.webrtc.connect("pad-added", self.on_pad_added)
        self.webrtc.connect("notify::ice-gathering-state", self.on_gathering)
        self.webrtc.connect("notify::ice-connection-state", self.on_state, "ice-connection-state")
        self.webrtc.connect("notify::connection-state", self.on_state, "connection-state")
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_bus_error)
        bus.connect("message::warning", self.on_bus_warning)

    # -- offer ------------------------------------------------------------------------------

    def add_transceivers(self):
        for seat in range(self.args.seats):
            for kind in self.args.kinds:
                caps = Gst.Caps.from_string(AUDIO_CAPS if kind == "audio" else VIDEO_CAPS)
                self.webrtc.emit("add-transceiver",
                                 GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, caps)
                self.layout.append({"mline": len(self.layout), "seat": seat, "kind": kind})

    def start(self):
        self.add_transceivers()
        self.pipeline.set_state(Gst.State.PLAYING)
        promise = Gst.Promise.new_with_change_func(self.on_offer_created, None)
        self.webrtc.emit("create-offer", None, promise)
        # webrtcbin 1.22 may leave ice-gathering-state at "gathering" when an m-section is
        # bundled away; after this long the candidates gathered so far are all there are
        # (host candidates only, no STUN), so post what the local description holds.
        GLib.timeout_add_seconds(5, self.gathering_timeout)
        GLib.timeout_add_seconds(int(self.args.seconds) + 30, self.overall_timeout)

    def on_offer_created(self, promise, _data):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        log("offer created; gathering ICE candidates (no trickle)")

    def on_gathering(self, *_):
        state = self.webrtc.get_property("ice-gathering-state")
        log(f"ice-gathering-state {state.value_nick}")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self.post_offer)

    def gathering_timeout(self):
        if not self.posted:
            log("gathering not complete after 5 s: posting the candidates gathered so far")
            self.post_offer()
        return False

    def post_offer(self):
        if self.posted:
            return False
        self.posted = True
        self.offer_text = self.webrtc.get_property("local-description").sdp.as_text()
        if self.args.save_offer:
            open(self.args.save_offer, "w").write(self.offer_text)
        # The HTTP exchange runs off the main loop so webrtcbin's signals keep flowing.
        threading.Thread(target=self.http_post, daemon=True).start()
        return False

    def http_post(self):
        url = f"http://{self.args.server}/whep/{self.args.room}"
        req = urllib.request.Request(url, data=self.offer_text.encode(), method="POST",
                                     headers={"Content-Type": "application/sdp"})
        try:
            with urllib.request.urlopen(req, timeout=10) as res:
                self.http_status = res.status
                ctype = res.headers.get("Content-Type", "")
                location = res.headers.get("Location")
                if location:
                    self.resource = urllib.parse.urljoin(url, location)
                body = res.read().decode()
        except urllib.error.HTTPError as e:
            self.http_status = e.code
            self.error = f"POST {url}: {e.code} {e.read().decode(errors='replace')[:300]}"
            GLib.idle_add(self.finish)
            return
        except Exception as e:  # noqa: BLE001 - any failure ends the run with its reason
            self.error = f"POST {url}: {e}"
            GLib.idle_add(self.finish)
            return
        log(f"POST {url}: {self.http_status} ({ctype}, {len(body)} bytes)")
        if self.http_status != 201 or not ctype.startswith("application/sdp"):
            self.error = f"expected 201 application/sdp, got {self.http_status} {ctype!r}"
            GLib.idle_add(self.finish)
            return
        self.answer_text = body
        if self.args.save_answer:
            open(self.args.save_answer, "w").write(body)
        GLib.idle_add(self.apply_answer)

    # -- answer -----------------------------------------------------------------------------

    def apply_answer(self):
        res, msg = GstSdp.SDPMessage.new_from_text(self.answer_text)
        if res != GstSdp.SDPResult.OK:
            self.error = "the answer does not parse as SDP"
            self.finish()
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        promise = Gst.Promise.new_with_change_func(self.on_answer_applied, None)
        self.webrtc.emit("set-remote-description", answer, promise)
        return False

    def on_answer_applied(self, promise, _data):
        promise.wait()
        reply = promise.get_reply()
        err = reply.get_value("error") if reply and reply.has_field("error") else None
        if err:
            self.error = f"set-remote-description: {err}"
            GLib.idle_add(self.finish)
            return
        self.answered_at = time.monotonic()
        log(f"answer applied; counting for {self.args.seconds} s")
        GLib.timeout_add(int(self.args.seconds * 1000), self.finish)

    def on_new_ssrc(self, _rtpbin, session, ssrc):
        with self.lock:
            self.ssrcs.setdefault(ssrc, {"session": session})
        log(f"rtpbin: new SSRC {ssrc} in session {session}")

    def on_state(self, _obj, _pspec, prop):
        log(f"{prop} {self.webrtc.get_property(prop).value_nick}")

    # -- pads and decoding ------------------------------------------------------------------

    def on_pad_added(self, _webrtc, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        caps = pad.get_current_caps()
        s = caps.get_structure(0) if caps else None
        trans = pad.get_property("transceiver")
        rec = {
            "pad": pad.get_name(),
            # Where webrtcbin routed the stream: the transceiver (m-line) the pad belongs to.
            "transceiver_mline": trans.get_property("mlineindex") if trans else None,
            "transceiver_mid": trans.get_property("mid") if trans else None,
            "transceiver_kind": (trans.get_property("kind").value_nick if trans else None),
            "msid": pad.get_property("msid"),
            # What actually arrives on it: the RTP caps rtpbin's payload demuxer gave it.
            "media": s.get_string("media") if s else None,
            "encoding_name": s.get_string("encoding-name") if s else None,
            "payload": s.get_value("payload") if s and s.has_field("payload") else None,
            "ssrc": s.get_value("ssrc") if s and s.has_field("ssrc") else None,
            "rtp_buffers": 0,
            "decoded_caps": None,
            "decoded_buffers": 0,
        }
        with self.lock:
            self.pads[rec["pad"]] = rec
        log(f"pad {rec['pad']}: transceiver m-line {rec['transceiver_mline']} "
            f"({rec['transceiver_kind']}), caps media={rec['media']} "
            f"{rec['encoding_name']} pt={rec['payload']} ssrc={rec['ssrc']}")

        def count_rtp(_pad, _info):
            with self.lock:
                rec["rtp_buffers"] += 1
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.BUFFER, count_rtp)

        # decodebin depayloads and decodes whatever the pad carries, as a whepsrc user's
        # playbin/uridecodebin would; a fakesink per decoded stream keeps the pipeline flowing.
        dec = Gst.ElementFactory.make("decodebin")
        dec.connect("pad-added", self.on_decoded_pad, rec)
        self.pipeline.add(dec)
        dec.sync_state_with_parent()
        if pad.link(dec.get_static_pad("sink")) != Gst.PadLinkReturn.OK:
            log(f"could not link {rec['pad']} to decodebin")

    def on_decoded_pad(self, _dec, pad, rec):
        caps = pad.get_current_caps() or pad.query_caps(None)
        rec["decoded_caps"] = caps.get_structure(0).get_name() if caps else None
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("async", False)
        self.pipeline.add(sink)
        sink.sync_state_with_parent()

        def count(_pad, _info):
            with self.lock:
                rec["decoded_buffers"] += 1
            return Gst.PadProbeReturn.OK

        pad.add_probe(Gst.PadProbeType.BUFFER, count)
        pad.link(sink.get_static_pad("sink"))
        log(f"pad {rec['pad']} decodes to {rec['decoded_caps']}")

    # -- end --------------------------------------------------------------------------------

    def on_bus_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        # A decodebin that cannot handle one pad must not end the whole run: record it.
        log(f"ERROR from {msg.src.get_name()}: {err.message} ({dbg})")
        if msg.src == self.webrtc or msg.src == self.pipeline:
            self.error = f"{msg.src.get_name()}: {err.message}"
            self.finish()

    def on_bus_warning(self, _bus, msg):
        err, _dbg = msg.parse_warning()
        log(f"WARNING from {msg.src.get_name()}: {err.message}")

    def overall_timeout(self):
        if self.error is None and self.answered_at is None:
            self.error = "timed out before the answer was applied"
        self.finish()
        return False

    def finish(self):
        if self.loop.is_running():
            self.loop.quit()
        return False

    def summary(self):
        with self.lock:
            pads = [dict(p) for p in sorted(self.pads.values(), key=lambda p: p["pad"])]
        expected = []
        for m in self.layout:
            if m["seat"] >= self.args.expect_seats:
                continue
            # The stream of m-line i decoded where it belongs: on a pad of transceiver i,
            # carrying that m-line's kind.
            ok = any(p["transceiver_mline"] == m["mline"] and p["media"] == m["kind"]
                     and p["decoded_buffers"] > 0 for p in pads)
            # And whether its kind decoded at all, on whatever pad webrtcbin gave it.
            anywhere = any(p["media"] == m["kind"] and p["decoded_buffers"] > 0 for p in pads)
            expected.append(dict(m, decoded_on_own_pad=ok, decoded_anywhere=anywhere))
        misrouted = [p["pad"] for p in pads
                     if p["media"] and p["transceiver_kind"] not in (None, p["media"])]
        return {
            "server": self.args.server,
            "room": self.args.room,
            "order": self.args.order,
            "seats": self.args.seats,
            "bundle_policy": self.args.bundle_policy,
            "http_status": self.http_status,
            "error": self.error,
            "offer_sections": self.layout,
            "resource": self.resource,
            "ssrcs_seen": sorted(self.ssrcs),
            "pads": pads,
            "misrouted_pads": misrouted,
            "expected": expected,
            "ok": self.error is None and bool(expected)
                  and all(e["decoded_on_own_pad"] for e in expected),
        }

    def delete_resource(self):
        # End the session as whepsrc does on stop; without it the server goes on sending to
        # this (closed) port until its connection times out.
        if not self.resource:
            return None
        req = urllib.request.Request(self.resource, method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=5) as res:
                return res.status
        except urllib.error.HTTPError as e:
            return e.code
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            return str(e)

    def run(self):
        self.start()
        self.loop.run()
        self.pipeline.set_state(Gst.State.NULL)
        summary = self.summary()
        summary["delete_status"] = self.delete_resource()
        return summary


def main():
    args = parse_args()
    Gst.init(None)
    for name in ("webrtcbin", "nicesrc", "decodebin", "rtpvp8depay", "vp8dec",
                 "rtpopusdepay", "opusdec"):
        if Gst.ElementFactory.find(name) is None:
            print(json.dumps({"ok": False, "error": f"GStreamer element {name} missing"}))
            return 2
    summary = Player(args).run()
    print(json.dumps(summary, indent=2))
    # The gist, last on stderr, for a reader of the test's output.
    log("; ".join(f"{p['media']} on m-line {p['transceiver_mline']}: "
                  f"{p['decoded_buffers']} decoded" for p in summary["pads"]) or "no pads")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
