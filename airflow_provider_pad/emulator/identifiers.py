"""Fixed ids and demo credentials of the emulated tenant, application registration and organization.

They are constants so that example DAGs, docs and tests can name them. They open nothing
outside the emulator.
"""

DEFAULT_TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
DEFAULT_CLIENT_ID = "00000000-0000-0000-0000-0000000000c1"
DEFAULT_CLIENT_SECRET = "dataverse-emulator-demo-secret"

ORGANIZATION_ID = "00000000-0000-0000-0000-0000000000a1"
ENVIRONMENT_ID = "00000000-0000-0000-0000-0000000000e1"
BUSINESS_UNIT_ID = "00000000-0000-0000-0000-0000000000b1"
# The application user that every access token represents.
USER_ID = "00000000-0000-0000-0000-0000000000d1"
