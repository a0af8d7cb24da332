# mod_wsgi entry point for openxpki-py.
#
# The instance config is taken from OPENXPKI_PY_CONFIG (process environment,
# or `SetEnv OPENXPKI_PY_CONFIG /path/config.yaml` in the Apache site), else
# /etc/openxpki-py/config.yaml.  Log lines go to Apache's error log.
from openxpki_py.web.wsgi import make_application

application = make_application()
