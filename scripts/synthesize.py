from petflare.cli.synthesize import main

if __name__ == "__main__":
    main()
