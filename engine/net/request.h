// What a request handler of `dp420 serve` sees: its session's connection,
// who is on the other end, the request frame, and how to answer.
//
// Thread safety: a Request belongs to the session thread handling it.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/control/clock.h"
#include "engine/control/liveness.h"
#include "engine/net/conn.h"
#include "engine/net/payloads.h"
#include "engine/net/server.h"

namespace dp420::net {

// JSON text of `j`; invalid UTF-8 in peer-supplied strings is replaced.
std::string Dump(const nlohmann::ordered_json& j);

// A request handler's view of its session.
struct Request {
  ServerContext& ctx;
  Conn& conn;
  const SessionInfo& who;
  const Frame& frame;
  uint64_t id() const { return frame.header.request_id; }
  Millis timeout() const { return ctx.options.LossTimeout(); }
  Status Send(FrameType type, const PayloadWriter& w) {
    liveness.Sent();
    return conn.Send(type, id(), w.bytes(), timeout());
  }
  // A PING when nothing went out for a heartbeat interval.
  Status Tick() {
    if (!liveness.BeatDue()) return Status::Ok();
    PayloadWriter w;
    w.U64(WallClockNs());
    return Send(FrameType::kPing, w);
  }
  Status Done(const nlohmann::ordered_json& summary) {
    PayloadWriter w;
    w.String(Dump(summary));
    return Send(FrameType::kDone, w);
  }
  // Beats out (a PING after a silent heartbeat interval) and the agent's
  // loss (silent for the loss timeout): engine/control/liveness.h.
  control::Liveness liveness{control::SystemClock(),
                             std::chrono::nanoseconds(ctx.options.heartbeat_interval).count(),
                             std::chrono::nanoseconds(ctx.options.LossTimeout()).count()};
};

// Keeps the connection alive while `done` is false: PINGs after a silent
// heartbeat interval, PONGs (and PINGs) from the agent read and answered.
// kNetwork when the agent stays silent for the loss timeout or breaks the
// protocol.
Status KeepAliveUntil(Request& rq, const std::atomic<bool>& done);

// Runs `work` (which must not throw: guard it) on a worker thread while the
// session is kept alive; sets `cancel` when the agent is lost, then waits
// for the worker. The keep-alive's status.
template <typename Work>
Status RunKeptAlive(Request& rq, std::atomic<bool>& cancel, Work&& work) {
  std::atomic<bool> done{false};
  std::thread worker([&] {
    work();
    done.store(true);
  });
  // Guarded: an exception must not unwind past the running worker.
  Status s = RunGuarded("request", [&] { return KeepAliveUntil(rq, done); });
  if (!s.ok()) cancel.store(true);
  worker.join();
  return s;
}

}  // namespace dp420::net
