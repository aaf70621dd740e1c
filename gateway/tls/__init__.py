"""TLS: the local CA, the server's SSL contexts (SNI per name), ACME and the trust stores."""
