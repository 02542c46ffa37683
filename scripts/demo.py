"""Run the petflare demo on the embedded synthetic phantom (see configs/demo.yaml)."""

from petflare.cli.demo import main

if __name__ == "__main__":
    main()
