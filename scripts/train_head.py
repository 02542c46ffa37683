from petflare.cli.train_head import main

if __name__ == "__main__":
    main()
