//! `tether proxy`: a WebSocket-aware load balancer.
