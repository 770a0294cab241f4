"""HTTP clients of the services' internal APIs: one per service, used by every caller.

Services never import each other; where one reads another's HTTP API (the publisher and the
warning service read bigdata's, the publisher reads the warning service's), it does so through
the client here.
"""
