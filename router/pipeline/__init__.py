"""The background work: fan-out (dispatch), delivery attempts and the loops that run them."""
