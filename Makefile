# focal_rpn: make install | make demo | make test
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.focal_rpn-installed
# The second test leg: detectron2 main (what GPU users install from git), from the project's
# shared snapshot (tools/install_detectron2_main.py); focal_rpn is used from this checkout.
D2MAIN_VENV    := .venv-d2main
D2MAIN_TARBALL := ../shared/detectron2-main-02b5c4e.tar.gz
# opencv's full build needs the display libraries; without libGL take the headless build.
OPENCV := $(shell ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' && echo opencv-python || echo opencv-python-headless)

.PHONY: install demo test test-d2main bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install_detectron2.py
	@echo "==> [1/5] virtual environment $(VENV)"
	@test -x $(PYTHON) || python3 -m venv $(VENV)
	@echo "==> [2/5] pinned requirements (torch, torchvision, fvcore, pycocotools, pytest, ...)"
	$(PYTHON) -m pip install --disable-pip-version-check -q -r requirements.txt
	@echo "==> [3/5] $(OPENCV)"
	$(PYTHON) -m pip install --disable-pip-version-check -q $(OPENCV)
	@echo "==> [4/5] detectron2"
	$(PYTHON) tools/install_detectron2.py
	@echo "==> [5/5] focal_rpn (editable)"
	$(PYTHON) -m pip install --disable-pip-version-check -q --no-build-isolation --no-deps -e .
	@touch $(STAMP)
	@echo "==> installed: $(PYTHON) -c 'import focal_rpn, detectron2' works"

demo: install
	$(PYTHON) tools/train_net.py --config-file configs/quick_retinanet_R18.yaml --num-gpus 1 OUTPUT_DIR output/demo

test: install
	$(PYTHON) -m pytest -q tests

test-d2main:
	@if [ ! -f $(D2MAIN_TARBALL) ]; then \
		echo "==> detectron2 main leg skipped: $(D2MAIN_TARBALL) is absent (the snapshot lives in the project's shared folder)"; \
	else \
		python3 tools/install_detectron2_main.py --venv $(D2MAIN_VENV) --tarball $(D2MAIN_TARBALL) && \
		PYTHONPATH=$(CURDIR) $(D2MAIN_VENV)/bin/python -m pytest -q tests; \
	fi

bench: install
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf $(VENV) $(D2MAIN_VENV) output *.egg-info
