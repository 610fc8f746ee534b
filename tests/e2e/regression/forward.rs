//! Forwarder: cloned agents, failover timing, IPv6, shutdown (issue 12: 3, 8, 24, 25).
