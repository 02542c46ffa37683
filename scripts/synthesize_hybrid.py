from petflare.cli.synthesize_hybrid import main

if __name__ == "__main__":
    main()
