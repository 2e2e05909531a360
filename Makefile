# Two commands work on a fresh machine: `make demo` and `make test`.
# Everything else is reached through them.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test tools ohif bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# dcmtk (storescu, storescp, dcmdump, dcmcjpeg), dicom3tools (dciodvfy) and pixelmed-apps (DicomSRValidator)
# are the real tools and judges the tests call; orthanc-dicomweb, chromium and npm serve the OHIF viewer test,
# orthanc-python and socat the STOW-RS export tests, systemd the unit check.
APT_TOOLS := dcmtk dicom3tools pixelmed-apps orthanc orthanc-dicomweb orthanc-python socat chromium systemd
# npm only where no npm is there: Debian's npm conflicts with the nodejs of NodeSource (which brings its own npm).
APT_NPM   := $$(command -v npm >/dev/null || echo npm)
tools:
	@if ! command -v dciodvfy >/dev/null || ! command -v storescp >/dev/null || ! command -v DicomSRValidator >/dev/null || ! command -v Orthanc >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v npm >/dev/null || ! command -v systemd-analyze >/dev/null || ! command -v socat >/dev/null \
	    || ! ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so /usr/share/orthanc/plugins/libOrthancPython.so >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_TOOLS) $(APT_NPM) >/dev/null; \
	  else \
	    echo "need: sudo apt-get install $(APT_TOOLS)" >&2; exit 1; \
	  fi; \
	fi

# OHIF (the built viewer: the npm package @ohif/app's dist/) for tests/test_viewer_ohif.py, unpacked into the
# gitignored .ohif/ (npm pack checks the registry's integrity hash; nothing is built or run by npm).
OHIF_VERSION := 3.13.2
OHIF_DIST    := .ohif/package/dist/index.html
$(OHIF_DIST):
	rm -rf .ohif && mkdir -p .ohif
	cd .ohif && npm pack --silent @ohif/app@$(OHIF_VERSION) >/dev/null && tar xzf ohif-app-$(OHIF_VERSION).tgz && rm ohif-app-$(OHIF_VERSION).tgz
	test -f $@
ohif: tools $(OHIF_DIST)

demo: $(STAMP) tools
	$(VENV)/bin/ercp-node demo

# The tests in TEST_WORKERS processes, each taking whole files (module fixtures made once; many tests wait on
# sockets and subprocesses), then the stress suite alone, whose memory bounds and timeouts were set for a machine
# not shared with other tests. On 2 cores, .ci/run's clean clone: 33.3 min in one process, 14.3 + 11.2 min this
# way (2026-12-07). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: $(STAMP) tools ohif
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25 --ignore=tests/stress
	$(PY) -m pytest -q tests/stress

bench: $(STAMP) tools
	$(PY) bench/bench_phantom.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ohif test-artefacts
