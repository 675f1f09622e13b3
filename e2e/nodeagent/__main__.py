from nodeagent.agent import main

main()
