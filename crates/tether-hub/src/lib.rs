//! `tether hub`: a realtime WebSocket node with channels, history and resume.
