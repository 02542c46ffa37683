from petflare.cli.export_model import main

if __name__ == "__main__":
    main()
