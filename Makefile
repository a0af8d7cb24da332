# The two commands a newcomer needs (see README.md): `make demo`, `make test`.
VENV ?= /opt/openxpki-py/venv
DEMO_DIR ?= /var/tmp/openxpki-py-demo
# alice's card in the demo: softhsm (needs nothing else), or openpgp / piv: a
# software card behind pcscd + vpcd, borrowed from the tests (needs test-deps)
CARD ?= softhsm

.PHONY: deps test-deps test demo ddl

deps:
	sh contrib/install/debian-deps.sh $(VENV)

test-deps:
	sh contrib/install/debian-deps.sh $(VENV) --with-tests

test: test-deps
	sh tests/run $(VENV) $(PYTEST_ARGS)

demo: $(if $(filter softhsm,$(CARD)),deps,test-deps)
	$(VENV)/bin/python contrib/demo/run_demo.py --venv $(VENV) --dir $(DEMO_DIR) --card $(CARD)

ddl: deps
	$(VENV)/bin/openxpki-py db ddl --out sql/
