#pragma once

#include <chrono>
#include <memory>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

namespace switchyard::server {

/// A connection's deadline, checked lazily: moving it is a store, not a timer operation. (Beast's
/// tcp_stream starts and cancels a timer around every read and write: two locks of the reactor's
/// timer queue and one more handler to run, for each of them.) One
/// timer per connection wakes when the deadline it was set for comes; if the deadline has moved
/// on since, it sleeps until the new one; if it has passed, it closes the socket, and the
/// pending read or write fails. Lives on the connection's io thread, like the socket: the timer's
/// handler and the session never run at the same time.
class ConnectionDeadline {
 public:
  using Clock = std::chrono::steady_clock;

  explicit ConnectionDeadline(boost::asio::ip::tcp::socket& socket) : state_(std::make_shared<State>(socket)) {}
  ConnectionDeadline(const ConnectionDeadline&) = delete;
  ConnectionDeadline& operator=(const ConnectionDeadline&) = delete;
  ~ConnectionDeadline() {
    state_->socket = nullptr;  // a wait still pending finds the connection gone
    state_->timer.cancel();
  }

  void expires_after(Clock::duration timeout) { set(Clock::now() + timeout); }
  void expires_never() { state_->deadline = Clock::time_point::max(); }

  /// Also ends the pending wait, if any: an io_context with nothing else to do can then return
  /// from run(). (expires_never() leaves the wait pending; it ends at the old deadline.)
  void cancel() {
    expires_never();
    state_->armed = false;
    state_->timer.cancel();
  }

 private:
  struct State {
    explicit State(boost::asio::ip::tcp::socket& s) : socket(&s), timer(s.get_executor()) {}
    boost::asio::ip::tcp::socket* socket;
    boost::asio::steady_timer timer;
    Clock::time_point deadline = Clock::time_point::max();
    bool armed = false;  // a wait is pending that will look at `deadline` no later than it
  };

  void set(Clock::time_point deadline) {
    state_->deadline = deadline;
    if (state_->armed && state_->timer.expiry() <= deadline) return;  // it wakes in time to look
    arm(state_, deadline);
  }

  static void arm(const std::shared_ptr<State>& state, Clock::time_point at) {
    state->armed = true;
    state->timer.expires_at(at);  // a wait already pending ends with operation_aborted
    state->timer.async_wait([state](const boost::system::error_code& error) {
      if (error || state->socket == nullptr) return;  // replaced by a newer wait, or the connection ended
      if (state->deadline == Clock::time_point::max()) {
        state->armed = false;  // no deadline now (a request being handled); set() arms again
      } else if (Clock::now() < state->deadline) {
        arm(state, state->deadline);
      } else {
        state->armed = false;
        boost::system::error_code ignored;
        state->socket->close(ignored);
      }
    });
  }

  std::shared_ptr<State> state_;
};

}  // namespace switchyard::server
