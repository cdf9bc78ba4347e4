VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,export,label]"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/allspark demo

test: $(VENV)/.installed
	$(PY) -m pytest -q -rs -n 2

clean:
	rm -rf $(VENV) runs demo_data
