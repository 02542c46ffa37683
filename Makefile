# petflare: the README's commands. `make demo` and `make test` set everything up from scratch.
# GPU users: make test TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.petflare-installed

.PHONY: setup demo test test-fast lint weights weights-gpu weights-stage2 weights-sites weights-anatomy clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# The whole suite, and the quick loop without the tests marked slow (each over ~1.5 s of CPU):
# `make test-fast` while working, `make test` before integrating. Measured 2026-12-07 on the
# 2-core development machine, shared with other jobs, so as CPU time (the process and its
# children): make test about 10.5 min (the 678 tests of then, each timed with
# `PYTEST_ARGS="-p cpu_time_plugin -p no:randomly"`, tests/cpu_time_plugin.py: 618 s, plus 11 s
# collecting); make test-fast 2.3 min (690 tests, `/usr/bin/time` on the whole run: 141 s; its
# wall time was 9.3 min at a load average of 10-13).
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/mypy

demo: setup
	$(BIN)/python scripts/demo.py

# Reproduce the shipped model folder models/phantom-unet: segmentation U-Net, then the pattern head
# (the head is tied to the exact segmentation weights, so it is retrained after every export).
weights: setup
	$(BIN)/python scripts/train.py experiment=synthetic_cpu overwrite=true
	$(BIN)/python scripts/export_model.py run_dir=runs/synthetic_cpu out_dir=models/phantom-unet \
		overwrite=true 'training_command="python scripts/train.py experiment=synthetic_cpu"'
	$(BIN)/python scripts/train_head.py experiment=head_synthetic_cpu overwrite=true

# The default folder models/phantom-unet-gpu: needs one CUDA GPU and a CUDA torch build (e.g.
# make weights-gpu TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"); the shipped
# one was stopped by the 5-minute limit at step 3093 of 4000 on an H200 with 16 CPU cores. The
# head is trained on the CPU, then its temperature refitted on 72 varied validation pairs.
weights-gpu: setup
	$(BIN)/python scripts/train.py experiment=synthetic_gpu overwrite=true +trainer.max_time=00:00:05:00
	$(BIN)/python scripts/export_model.py run_dir=runs/synthetic_gpu out_dir=models/phantom-unet-gpu \
		overwrite=true 'training_command="python scripts/train.py experiment=synthetic_gpu +trainer.max_time=00:00:05:00"'
	$(MAKE) weights-sites
	$(BIN)/python scripts/train_head.py experiment=head_synthetic_cpu \
		model_dir=models/phantom-unet-gpu overwrite=true
	$(BIN)/python scripts/train_head.py experiment=head_calibrate_wide \
		model_dir=models/phantom-unet-gpu overwrite=true

# models/phantom-unet-stage2 (issue 32; not the default): the default folder's GPU-stage lesion
# network fine-tuned on 2 CPU cores (about 10 min) on its own phantoms plus hybrid scans with
# sarcoma-like masses on the ACRIN-042 and CHUS-052 backgrounds (STS_001 left out), with
# tumour-centred field-of-view crops; the default's site network copied in; then its own pattern
# head (about 35 min). Better on real tumours, worse pattern calls on real-background pairs
# (docs/model_card.md). Needs ../shared/data/real (or PETFLARE_REAL_DATA).
weights-stage2: setup
	$(BIN)/python scripts/synthesize_hybrid.py hybrid=masses out=data/hybrid_masses n_variants=16 \
		seed=12 'exclude=[sts001]' overwrite=true
	$(BIN)/python scripts/train.py experiment=default_masses_cpu overwrite=true
	$(BIN)/python scripts/export_model.py run_dir=runs/default_masses_cpu out_dir=models/phantom-unet-stage2 \
		checkpoint=last physiology_filter=true overwrite=true \
		'training_command="make weights-stage2 (experiment=default_masses_cpu from models/phantom-unet-gpu)"'
	rm -rf models/phantom-unet-stage2/sites && cp -r models/phantom-unet-gpu/sites models/phantom-unet-stage2/sites
	$(BIN)/python scripts/train_head.py experiment=head_synthetic_cpu model_dir=models/phantom-unet-stage2 overwrite=true
	$(BIN)/python scripts/train_head.py experiment=head_calibrate_wide model_dir=models/phantom-unet-stage2 overwrite=true

# The default folder's site network models/phantom-unet-gpu/sites (issue 32): a small U-Net that
# sees the whole body at 8 mm and labels brain, myocardium, kidneys and bladder for the physiology
# filter. Phantom v2 plus hybrid scans on the ACRIN-042 and CHUS-052 backgrounds (STS_001 left
# out); about 40 min on 2 CPU cores. Needs ../shared/data/real (or PETFLARE_REAL_DATA).
weights-sites: setup
	$(BIN)/python scripts/synthesize_hybrid.py hybrid=masses out=data/hybrid_masses n_variants=16 \
		seed=12 'exclude=[sts001]' overwrite=true
	$(BIN)/python scripts/train.py experiment=sites_cpu overwrite=true
	$(BIN)/python scripts/export_model.py run_dir=runs/sites_cpu out_dir=models/phantom-unet-gpu/sites \
		overwrite=true 'training_command="make weights-sites"'

# The anatomy-aware folder models/anatomy-unet (issues 32 / 34). Stage 1: hybrid scans on the
# real ACRIN-042 and CHUS-052 backgrounds (STS_001 left out), the default network widened with
# the organ output and fine-tuned on them plus phantom v2. Stage 2: fine-tuned further on hybrid
# scans with sarcoma-like masses labelled by the GTV convention (hybrid=masses) and more
# lesion-centred patches, exported over stage 1. Then its pattern head, on phantom-v2 pairs and
# pairs on the same two real backgrounds. All on 2 CPU cores (about 2.5 h). Needs
# ../shared/data/real (or PETFLARE_REAL_DATA).
weights-anatomy: setup
	$(BIN)/python scripts/synthesize_hybrid.py out=data/hybrid_train n_variants=16 seed=11 \
		'exclude=[sts001]' overwrite=true
	$(BIN)/python scripts/train.py experiment=anatomy_cpu overwrite=true \
		trainer.max_steps=1200 trainer.val_check_interval=200 +trainer.max_time=00:00:55:00
	$(BIN)/python scripts/export_model.py run_dir=runs/anatomy_cpu out_dir=models/anatomy-unet \
		overwrite=true 'training_command="make weights-anatomy (stage 1)"'
	$(BIN)/python scripts/synthesize_hybrid.py hybrid=masses out=data/hybrid_masses n_variants=16 \
		seed=12 'exclude=[sts001]' overwrite=true
	$(BIN)/python scripts/train.py experiment=anatomy_masses_cpu overwrite=true
	$(BIN)/python scripts/export_model.py run_dir=runs/anatomy_masses_cpu out_dir=models/anatomy-unet \
		overwrite=true 'training_command="make weights-anatomy (stage 2)"'
	$(BIN)/python scripts/synthesize.py synth=v2 out=data/head_mix/phantom n_pairs=64 seed=3500 \
		figure=false overwrite=true
	$(BIN)/python scripts/synthesize_real_pairs.py out=data/head_mix/real n_pairs=48 seed=700 \
		'exclude=[sts001]' overwrite=true
	$(BIN)/python scripts/train_head.py experiment=head_anatomy_cpu overwrite=true

clean:
	rm -rf $(VENV) demo_out .pytest_cache .mypy_cache .ruff_cache
