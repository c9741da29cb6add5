"""SCIM 2.0 provisioning (RFC 7643/7644) on `usersctl serve --scim`, at /scim/v2: an
identity provider (Okta, Microsoft Entra ID) creates, updates, disables and deletes
users itself. Built on scim2-models (schemas, filter grammar, PATCH semantics)."""
