# focal_rpn: make install | make demo | make test
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.focal_rpn-installed
# opencv's full build needs the display libraries; without libGL take the headless build.
OPENCV := $(shell ldconfig -p 2>/dev/null | grep -q 'libGL.so.1' && echo opencv-python || echo opencv-python-headless)

.PHONY: install demo test bench clean

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

bench: install
	$(PYTHON) benchmarks/run.py

clean:
	rm -rf $(VENV) output *.egg-info
