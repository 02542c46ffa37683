from petflare.cli.synthesize_real_pairs import main

if __name__ == "__main__":
    main()
