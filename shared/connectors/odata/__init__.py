"""OData v4: the `kind: odata` connector (`connector`) and what every OData connector uses, Dataverse's too:
`client` (HTTP, credentials, the link guard, throttling, size caps), `batch` (JSON and multipart `$batch`),
`literals` (the ABNF's literals, percent-encoding, exact JSON), `faults` (error bodies, Retry-After),
`metadata` (CSDL: keys and value types), `reads` (keysets, deleted entities), `throttle` and `auth` (MSAL)."""
