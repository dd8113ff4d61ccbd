"""HTTP services of chatbx (twisted.web): upload, WebSocket, BOSH, host-meta, metrics."""
