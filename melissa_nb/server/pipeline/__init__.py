"""What a rank passes on besides its own statistics: user processing stages called with every
accepted message, their state in shared memory (`stages`), and the forwarding of accepted data
to a downstream consumer (`forward`, wire format in `melissa_nb.forward_protocol`). May import
`protocol`, `forward_protocol`, `auth`, `errors`, `server.config` and `server.live`."""
